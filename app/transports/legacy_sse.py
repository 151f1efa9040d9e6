"""The HTTP+SSE transport of 2024-11-05: GET ``/sse`` opens a stream whose first event names the URL to POST to.

Deprecated by the specification since 2025-03-26, kept for the clients that still speak only it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.jsonrpc import InvalidRequest, error_response
from app.transports.connection import MessageConnection
from app.transports.sse import SSE_HEADERS, format_event, with_keepalive
from app.transports.streamable_http import SCOPES_KEY, McpEndpoint, scopes_of

__all__ = ["LegacySse"]


@dataclass(eq=False)
class _Stream:
    connection: MessageConnection
    principal: str
    outbox: asyncio.Queue[bytes | None]


def _refusal(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(error_response(None, InvalidRequest(message)))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class LegacySse:
    """``GET /sse`` and ``POST /messages?session_id=...``."""

    def __init__(self, endpoint: McpEndpoint, *, max_request_bytes: int, keepalive_seconds: float) -> None:
        self._endpoint = endpoint
        self._streams: dict[str, _Stream] = {}
        self._max = max_request_bytes
        self._keepalive = keepalive_seconds

    async def _refused(self, request: Request) -> Response | None:
        refused = self._endpoint.origins.check(request.headers)
        if refused is not None:
            return _refusal(refused.status, refused.message)
        verdict = await self._endpoint.authenticator.authenticate(request.headers)
        if verdict.principal is None:
            return _refusal(verdict.status, verdict.message, dict(verdict.headers))
        request.scope[SCOPES_KEY] = verdict.scopes
        if self._endpoint.limits_rate:
            return await self._endpoint.rate_limited(verdict.principal, request)
        return None

    async def open(self, request: Request) -> Response:
        """GET /sse: the stream, announcing the messages URL first."""
        refused = await self._refused(request)
        if refused is not None:
            return refused
        stream_id = secrets.token_urlsafe(16)
        outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def send(data: bytes) -> None:
            await outbox.put(data)

        principal = self._endpoint.authenticator.principal(request.headers)
        scopes = scopes_of(request)
        connection = self._endpoint.connection(send=send, principal=principal, transport="sse", scopes=scopes,
                                               address=request.client.host if request.client else None)  # fmt: skip
        self._streams[stream_id] = _Stream(connection, principal, outbox)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield format_event(None, f"/messages?session_id={stream_id}".encode(), event="endpoint")

                async def messages() -> AsyncIterator[bytes]:
                    while (data := await outbox.get()) is not None:
                        yield format_event(None, data)

                async for chunk in with_keepalive(messages(), self._keepalive):
                    yield chunk
            finally:
                self._streams.pop(stream_id, None)
                await connection.close()

        return StreamingResponse(events(), media_type="text/event-stream", headers=dict(SSE_HEADERS))

    async def post(self, request: Request) -> Response:
        """POST /messages?session_id=...: one message for the stream's connection; answers come on the stream."""
        refused = await self._refused(request)
        if refused is not None:
            return refused
        stream = self._streams.get(request.query_params.get("session_id", ""))
        if stream is None or stream.principal != self._endpoint.authenticator.principal(request.headers):
            return _refusal(404, "Not Found: no open /sse stream has this session_id")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _refusal(415, "Unsupported Media Type: Content-Type must be application/json")
        body = await request.body()
        if len(body) > self._max:
            return _refusal(413, f"Payload Too Large: the body exceeds {self._max} bytes")
        await stream.connection.receive(body)
        return Response(b"Accepted", status_code=202, media_type="text/plain")

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        for stream in self._streams.values():
            stream.outbox.put_nowait(None)
