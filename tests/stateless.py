"""A 2026-07-28 (stateless) request to a real server over HTTP: the `_meta` and the headers that mirror the body."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}  # fmt: skip
_NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def post(
    url: str,
    method: str,
    params: dict[str, Any],
    *,
    timeout: float = 30,
    client: httpx.Client | None = None,
    request_id: int = 1,
    key: str | None = None,
) -> httpx.Response:
    """POST one request to the MCP endpoint ``url``, with Mcp-Method (and Mcp-Name) mirroring the body; on
    ``client``'s connections (kept alive between calls) when one is given; with ``key`` as its bearer token."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}  # fmt: skip
    if method in _NAMED_BY:
        headers["Mcp-Name"] = str(params[_NAMED_BY[method]])
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": META}}
    if client is not None:
        return client.post(url, headers=headers, content=orjson.dumps(body), timeout=timeout)
    return httpx.post(url, headers=headers, content=orjson.dumps(body), timeout=timeout)
