"""The MCP endpoint over HTTP: POST one JSON-RPC message, receive one JSON response.

This is the JSON-response mode of the streamable HTTP transport. Every refusal carries the right HTTP status
and a JSON-RPC error body that says what was wrong.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from app.jsonrpc import INVALID_REQUEST, InvalidRequest, JsonRpcError, error_response, parse_message
from app.observability.metrics import Metrics
from app.protocol import HANDSHAKE_REVISIONS, Dispatcher
from app.security import ApiKeyAuthenticator

__all__ = ["McpEndpoint"]

_JSON = "application/json"


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _refusal(status: int, message: str, headers: dict[str, str] | None = None, data: Any = None) -> Response:
    error = InvalidRequest(message, data=data)
    return _json(error_response(None, error), status, headers)


def _accepts_json(accept: str) -> bool:
    if not accept:
        return True
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in {_JSON, "application/*", "*/*"}:
            return True
    return False


class McpEndpoint:
    """Handles requests to ``/mcp``."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        authenticator: ApiKeyAuthenticator,
        metrics: Metrics,
        max_request_bytes: int,
    ) -> None:
        self._dispatcher = dispatcher
        self._auth = authenticator
        self._metrics = metrics
        self._max_bytes = max_request_bytes

    async def handle(self, request: Request) -> Response:
        """Answer one HTTP request to the MCP endpoint."""
        if not self._auth.accepts(request.headers):
            self._metrics.auth_failures.inc()
            return _refusal(
                401,
                "Unauthorized: send a valid API key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": 'Bearer realm="erlmcp"'},
            )
        if request.method != "POST":
            return _refusal(
                405,
                f"Method Not Allowed: {request.method} /mcp; this server answers POST with JSON responses",
                headers={"Allow": "POST"},
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != _JSON:
            return _refusal(415, f"Unsupported Media Type: Content-Type must be application/json, not {content_type!r}")
        if not _accepts_json(request.headers.get("accept", "")):
            return _refusal(406, "Not Acceptable: the Accept header must allow application/json")
        version = request.headers.get("mcp-protocol-version")
        if version is not None and version not in HANDSHAKE_REVISIONS:
            return _refusal(
                400,
                f"Bad Request: unsupported MCP-Protocol-Version {version!r}",
                data={"supported": list(HANDSHAKE_REVISIONS), "requested": version},
            )
        body = await self._read_body(request)
        if body is None:
            return _refusal(413, f"Payload Too Large: the body exceeds {self._max_bytes} bytes")
        try:
            message = parse_message(body)
        except JsonRpcError as error:
            self._metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            return _json(error_response(error.request_id, error), 400)
        outcome = await self._dispatcher.dispatch(message)
        self._metrics.mcp_requests.labels(method=outcome.method, outcome=outcome.status).inc()
        if outcome.tool is not None:
            self._metrics.mcp_tool_calls.labels(tool=outcome.tool, outcome=outcome.status).inc()
        request.scope["erlmcp"] = {"mcp_method": outcome.method, "mcp_outcome": outcome.status}
        if outcome.response is None:
            return Response(status_code=202)
        failure = outcome.response.get("error")
        if failure is not None and failure.get("code") == INVALID_REQUEST:
            return _json(outcome.response, 400)
        return _json(outcome.response)

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than allowed (checked before and while reading)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self._max_bytes:
                    return None
                chunks.append(chunk)
        except ClientDisconnect:
            return b""
        return b"".join(chunks)
