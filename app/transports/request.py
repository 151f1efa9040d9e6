"""The request the MCP endpoint reads: Starlette's, with its headers looked up through a dict made once.

The endpoint and the gate look up about eight headers per request (Host, Origin, Authorization, Content-Type,
Accept, Mcp-Session-Id, MCP-Protocol-Version, Content-Length); Starlette's :class:`~starlette.datastructures.Headers`
scans the raw list and decodes every name it passes at each lookup. :class:`IndexedHeaders` decodes each header once
and answers lookups from a dict, with Starlette's semantics: names match case-insensitively, and of a repeated header
the first one is the one a lookup returns.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Scope

__all__ = ["IndexedHeaders", "McpRequest"]


# Header names seen, as bytes, each with its decoded lowercase name: every request carries the same few, so they
# are decoded once per process rather than once per request. Bounded in count and length: names are the client's.
_NAMES: dict[bytes, str] = {}
_NAMES_KEPT = 128
_NAME_KEPT_BYTES = 64


class IndexedHeaders(Headers):
    """A request's headers (Starlette's :class:`Headers`), each name and value decoded once, looked up in a dict.

    ``first`` is that dict: the first value of each header by its lowercase name. The endpoint hands it to the gate
    and reads its own headers from it, by lowercase names, without a call per lookup."""

    def __init__(self, scope: Scope) -> None:
        raw = scope["headers"]
        if type(raw) is not list:  # Starlette's Headers takes a list, and puts it back in the scope
            raw = scope["headers"] = list(raw)
        self._list = raw
        first: dict[str, str] = {}
        names = _NAMES
        for name, value in raw:
            key = names.get(name)
            if key is None:
                key = name.decode("latin-1").lower()
                if len(names) < _NAMES_KEPT and len(name) <= _NAME_KEPT_BYTES:
                    names[name] = key
            if key not in first:  # a repeated header: the first one, as Starlette's lookup returns
                first[key] = value.decode("latin-1")
        self.first = first

    def __getitem__(self, key: str) -> str:
        found = self.first.get(key)  # the endpoint's and the gate's names are lowercase already
        return self.first[key.lower()] if found is None else found

    def get(self, key: str, default: Any = None) -> Any:
        found = self.first.get(key)
        return self.first.get(key.lower(), default) if found is None else found

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self.first


class McpRequest(Request):
    """A request to ``/mcp``: Starlette's, its headers :class:`IndexedHeaders`."""

    _indexed: IndexedHeaders | None = None

    @property
    def headers(self) -> IndexedHeaders:
        indexed = self._indexed
        if indexed is None:
            indexed = self._indexed = IndexedHeaders(self.scope)
        return indexed
