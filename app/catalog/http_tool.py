"""Tools, resources and resource templates of kind ``http``: each call or read renders the entry's request,
sends it to the upstream, and turns the answer into a tool result or resource contents.

A tool's templates see every argument by name (``{{ city }}``), all of them as ``arguments``, and the secrets
as ``secrets`` (an argument cannot stand in for them). Values are escaped for where they stand in the URL and in
a JSON or form body (app.catalog.escaping): a value in the path is one segment, in the query one value, in a JSON
body one JSON value; a value that would still change the request's shape (``..`` as a path segment, a path in
the host) is refused before anything is sent: a tool error for a tool, invalid params (-32602) for a resource.

A 2xx JSON answer is the result's text, and its ``structuredContent`` when the tool declares an ``outputSchema``
(tools/call then checks it against the schema). Anything else the model cannot use is a tool error saying why,
with secret values blanked out.

A resource's templates see the URI template's variables (none for a fixed resource) and ``secrets``. Textual
answers (``text/*``, JSON, XML, YAML) are ``text``, anything else a base64 ``blob``. An upstream 404 or 410
means the resource does not exist; other failures are internal errors naming the URI and the reason.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson
import structlog

from app.catalog.escaping import body_kind
from app.catalog.model import HttpResourceEntry, HttpTemplateEntry, HttpToolEntry
from app.catalog.upstream import (
    RefusedValue,
    Upstream,
    UpstreamError,
    UpstreamResponse,
    is_json,
    is_textual,
    redacted,
)
from app.features.resources import Reader, ResourceContents, ResourceNotFound
from app.features.tools import ToolError, ToolHandler, ToolResult, text_result
from app.jsonrpc import InternalError, InvalidParams
from app.protocol.context import RequestContext

__all__ = ["http_resource_reader", "http_tool_handler"]

log = structlog.get_logger(__name__)


def http_tool_handler(entry: HttpToolEntry, upstream: Upstream, *, timeout_seconds: float) -> ToolHandler:
    """The tools/call handler of ``entry``; the upstream must answer within ``timeout_seconds``."""

    kind = body_kind(entry.body, entry.headers) if entry.body is not None else "text"

    async def call(arguments: Mapping[str, Any], ctx: RequestContext) -> ToolResult:
        secrets: dict[str, str] = {}
        try:
            secrets = upstream.secrets(entry.secrets)
            variables = {**arguments, "arguments": dict(arguments), "secrets": secrets}
            url = upstream.render(entry.url, variables, field="url", escaping="url")
            headers = {
                name: upstream.render(value, variables, field=f"headers.{name}")
                for name, value in entry.headers.items()
            }
            body = (
                upstream.render(entry.body, variables, field="body", escaping=kind) if entry.body is not None else None
            )
            if body is not None and kind == "json" and not _json(body):
                raise UpstreamError(
                    "body: the template does not render to valid JSON (write a value as {{ name }}, which is "
                    'written as JSON, or inside a string as "{{ name }}")'
                )
            if body is not None and not any(name.lower() == "content-type" for name in headers) and _json(body):
                headers["Content-Type"] = "application/json"
            response = await upstream.request(
                method=entry.method, url=url, headers=headers, body=body, timeout=timeout_seconds
            )
            return _result(entry, response)
        except (UpstreamError, ToolError) as exc:
            message = redacted(str(exc), secrets)
            log.info("http tool call failed", tool=entry.name, error=message)
            raise ToolError(message) from None

    return call


def _json(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _result(entry: HttpToolEntry, response: UpstreamResponse) -> ToolResult:
    status = response.status_line
    if not response.ok:
        snippet = response.snippet()
        raise ToolError(
            f"the upstream answered {status}: {snippet}"
            if snippet
            else f"the upstream answered {status} with an empty body"
        )
    media = response.media_type
    if entry.output_schema is not None:
        if not response.content:
            raise ToolError(f"the upstream answered {status} with no body, and the tool declares an outputSchema")
        if media and not is_json(media):
            raise ToolError(f"the upstream answered {media}, not JSON, and the tool declares an outputSchema")
        try:
            parsed = orjson.loads(response.text)
        except orjson.JSONDecodeError as exc:
            raise ToolError(
                f"the upstream's answer is not valid JSON ({exc}), and the tool declares an outputSchema"
            ) from None
        if not isinstance(parsed, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(parsed), "a number or null")
            raise ToolError(
                f"the upstream's JSON is not an object (it is {kind}), and the tool declares an outputSchema"
            )
        return {**text_result(response.text), "structuredContent": parsed}
    if not response.content:
        return text_result(f"(empty response, {status})")
    if is_textual(media) or (not media and _utf8(response.content)):
        return text_result(response.text)
    if media.startswith(("image/", "audio/")):
        data = base64.b64encode(response.content).decode("ascii")
        return {"content": [{"type": media.partition("/")[0], "data": data, "mimeType": media}], "isError": False}
    raise ToolError(
        f"the upstream answered {media or 'binary data'} ({len(response.content)} bytes), which is "
        "not text, JSON, an image or audio"
    )


def http_resource_reader(
    entry: HttpResourceEntry | HttpTemplateEntry, upstream: Upstream, *, timeout_seconds: float = 30.0
) -> Reader:
    """The resources/read reader of ``entry``; the upstream must answer within ``timeout_seconds``."""

    async def read(uri: str, variables: Mapping[str, str]) -> ResourceContents:
        secrets: dict[str, str] = {}
        try:
            secrets = upstream.secrets(entry.secrets)
            context = {**variables, "secrets": secrets}
            url = upstream.render(entry.url, context, field="url", escaping="url")
            headers = {
                name: upstream.render(value, context, field=f"headers.{name}") for name, value in entry.headers.items()
            }
            response = await upstream.request(
                method="GET", url=url, headers=headers, body=None, timeout=timeout_seconds
            )
        except RefusedValue as exc:  # the URI's variables would lead the request elsewhere: the caller's mistake
            message = redacted(str(exc), secrets)
            log.info("http resource read refused", uri=uri, error=message)
            raise InvalidParams(
                f"Invalid params: resource {uri!r} cannot be read: {message}", data={"uri": uri}
            ) from None
        except UpstreamError as exc:
            message = redacted(str(exc), secrets)
            log.warning("http resource read failed", uri=uri, error=message)
            raise InternalError(f"resource {uri!r} cannot be read: {message}", data={"uri": uri}) from None
        if response.status in (404, 410):
            raise ResourceNotFound(
                f"Resource not found: {uri!r} (the upstream answered {response.status_line})", data={"uri": uri}
            )
        if not response.ok:
            snippet = redacted(response.snippet(), secrets)
            log.warning("http resource read failed", uri=uri, status=response.status)
            raise InternalError(
                f"resource {uri!r} cannot be read: the upstream answered {response.status_line}"
                + (f": {snippet}" if snippet else ""),
                data={"uri": uri},
            )
        mime_type = entry.mime_type or response.media_type or "application/octet-stream"
        if is_textual(mime_type.partition(";")[0].strip().lower()):
            return [{"uri": uri, "mimeType": mime_type, "text": response.text}]
        return [{"uri": uri, "mimeType": mime_type, "blob": base64.b64encode(response.content).decode("ascii")}]

    return read
