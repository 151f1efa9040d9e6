"""Resources: list, read, templates (RFC 6570 level 1), subscriptions."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.features.pagination import paginate
from app.jsonrpc import InvalidParams, JsonRpcError

__all__ = ["ResourceContents", "ResourceNotFound", "ResourceSpec", "Resources", "TemplateSpec"]

ResourceContents = list[dict[str, Any]]
Reader = Callable[[str, Mapping[str, str]], Awaitable[ResourceContents]]


class ResourceNotFound(JsonRpcError):
    """No resource has this URI: -32002 up to 2025-11-25 (the protocol layer maps it for later revisions)."""

    code = -32002


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A resource with a fixed URI."""

    uri: str
    name: str
    read: Reader
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None

    def describe(self) -> dict[str, Any]:
        """The resource as resources/list shows it."""
        described: dict[str, Any] = {"uri": self.uri, "name": self.name}
        optional = {"title": self.title, "description": self.description, "mimeType": self.mime_type}
        described.update({key: value for key, value in optional.items() if value is not None})
        return described


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """Resources whose URIs match an RFC 6570 level-1 template such as ``test://template/{id}/data``."""

    uri_template: str
    name: str
    read: Reader
    title: str | None = None
    description: str | None = None
    mime_type: str | None = None
    completions: Mapping[str, Sequence[str]] = field(default_factory=dict)  # values offered per variable

    def describe(self) -> dict[str, Any]:
        """The template as resources/templates/list shows it."""
        described: dict[str, Any] = {"uriTemplate": self.uri_template, "name": self.name}
        optional = {"title": self.title, "description": self.description, "mimeType": self.mime_type}
        described.update({key: value for key, value in optional.items() if value is not None})
        return described

    @property
    def variables(self) -> tuple[str, ...]:
        """The template's variable names, in order."""
        return tuple(re.findall(r"\{([A-Za-z0-9_]+)\}", self.uri_template))

    def match(self, uri: str) -> dict[str, str] | None:
        """The variables of ``uri`` when it matches the template (a variable never spans a ``/``)."""
        pattern = "".join(
            f"(?P<{part[1:-1]}>[^/?#]+)" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[A-Za-z0-9_]+\})", self.uri_template)
            if part
        )
        found = re.fullmatch(pattern, uri)
        return found.groupdict() if found else None


class Resources:
    """The resources and resource templates one server offers."""

    def __init__(self, resources: Sequence[ResourceSpec], templates: Sequence[TemplateSpec], *, page_size: int = 100):
        self._resources = {r.uri: r for r in resources}
        self._templates = list(templates)
        self._page_size = page_size

    @property
    def empty(self) -> bool:
        """Whether nothing is offered."""
        return not self._resources and not self._templates

    @property
    def templates(self) -> Sequence[TemplateSpec]:
        """The templates, for completion."""
        return self._templates

    def list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The result of resources/list."""
        page, next_cursor = paginate(list(self._resources.values()), params.get("cursor"), self._page_size)
        result: dict[str, Any] = {"resources": [r.describe() for r in page]}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return result

    def list_templates(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The result of resources/templates/list."""
        page, next_cursor = paginate(self._templates, params.get("cursor"), self._page_size)
        result: dict[str, Any] = {"resourceTemplates": [t.describe() for t in page]}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return result

    async def read(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The result of resources/read.

        Raises:
            InvalidParams: no URI given.
            ResourceNotFound: nothing has this URI.
        """
        uri = self._uri(params)
        resource = self._resources.get(uri)
        if resource is not None:
            return {"contents": await resource.read(uri, {})}
        for template in self._templates:
            variables = template.match(uri)
            if variables is not None:
                return {"contents": await template.read(uri, variables)}
        raise ResourceNotFound(f"Resource not found: {uri!r}", data={"uri": uri})

    def subscribable(self, params: Mapping[str, Any]) -> str:
        """The URI of a subscribe/unsubscribe request, checked.

        Raises:
            InvalidParams: no URI given.
            ResourceNotFound: nothing has this URI.
        """
        uri = self._uri(params)
        if uri not in self._resources and not any(t.match(uri) is not None for t in self._templates):
            raise ResourceNotFound(f"Resource not found: {uri!r}", data={"uri": uri})
        return uri

    @staticmethod
    def _uri(params: Mapping[str, Any]) -> str:
        uri = params.get("uri")
        if not isinstance(uri, str) or not uri:
            raise InvalidParams('Invalid params: "uri" must be a non-empty string')
        return uri
