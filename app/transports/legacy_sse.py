"""The HTTP+SSE transport of 2024-11-05: GET ``/sse`` opens a stream whose first event names the URL to POST to.

Deprecated by the specification since 2025-03-26, kept for the clients that still speak only it. Each stream is
one :class:`~app.protocol.channel.Channel`; every answer, refusals included, comes on the stream.

A stream holds one of its principal's connection slots while it is open (the gate's per-principal cap,
``ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL``): one over the cap is refused with 429, ``Retry-After`` and a JSON-RPC
error. Once the stream's key is revoked or its token expired, the stream's last event is the JSON-RPC error saying
so: at its next message (whose POST is refused with 401, as any request with that credential), or else at its
next keep-alive.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.jsonrpc import leading_request_id
from app.protocol.channel import Channel, Hangup
from app.protocol.core import ProtocolCore
from app.security.gate import Caller, Refusal
from app.transports.bodies import TooLarge, read_body, refuse, refused
from app.transports.held import HeldStream, until_revoked
from app.transports.sse import SSE_HEADERS, format_event, with_keepalive

__all__ = ["LegacySse"]


@dataclass(eq=False)
class _Stream:
    channel: Channel
    outbox: asyncio.Queue[bytes | None]
    hung_up: bool = False  # the channel refused a message and said why on the stream: nothing more to say


class LegacySse:
    """``GET /sse`` and ``POST /messages?session_id=...``."""

    def __init__(self, core: ProtocolCore, *, keepalive_seconds: float) -> None:
        self._core = core
        self._streams: dict[str, _Stream] = {}
        self._keepalive = keepalive_seconds

    async def _admit(self, request: Request) -> Caller | Refusal:
        return await self._core.gate.admit(request.headers, request.client.host if request.client else None)

    async def open(self, request: Request) -> Response:
        """GET /sse: the stream, announcing the messages URL first. Opening it is free, as a WebSocket upgrade is;
        each message on it takes its rate token."""
        caller = await self._admit(request)
        if isinstance(caller, Refusal):
            return refused(caller)
        slot = self._core.gate.hold(caller, "sse")
        if isinstance(slot, Refusal):
            return refused(slot)
        stream_id = secrets.token_urlsafe(16)

        async def events() -> AsyncIterator[bytes]:
            # The channel exists only while its stream is being sent: a client gone before that leaves nothing.
            outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
            channel = Channel(self._core, caller, send=outbox.put, transport="sse")
            stream = self._streams[stream_id] = _Stream(channel, outbox)
            try:
                yield format_event(None, f"/messages?session_id={stream_id}".encode(), event="endpoint")

                async def messages() -> AsyncIterator[bytes]:
                    while (data := await outbox.get()) is not None:
                        yield format_event(None, data)

                chunks = with_keepalive(messages(), self._keepalive)
                said = lambda: stream.hung_up  # noqa: E731
                async for chunk in until_revoked(chunks, self._core.gate, caller, "sse", already_said=said):
                    yield chunk
            finally:
                self._streams.pop(stream_id, None)
                await channel.close()

        return HeldStream(events(), slot, media_type="text/event-stream", headers=SSE_HEADERS)

    async def post(self, request: Request) -> Response:
        """POST /messages?session_id=...: one message for the stream's channel; answers come on the stream. A
        message over the size limit is refused on the stream too (with its id), so that its client stops waiting."""
        caller = await self._admit(request)
        if isinstance(caller, Refusal):
            self._end_if_revoked(request.query_params.get("session_id", ""))
            return refused(caller)
        stream = self._streams.get(request.query_params.get("session_id", ""))
        if stream is None or stream.channel.caller.principal != caller.principal:
            return refuse(404, "Not Found: no open /sse stream has this session_id")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return refuse(415, "Unsupported Media Type: Content-Type must be application/json")
        body = await read_body(request, self._core.gate.max_message_bytes)
        if isinstance(body, TooLarge):
            refusal = self._core.gate.oversized()
            answer = refusal.answer(leading_request_id(body.head))
            await stream.channel.send(answer)
            return Response(orjson.dumps(answer), refusal.status, media_type="application/json")
        try:
            await stream.channel.receive(body)
        except Hangup as hangup:  # its credential went since this POST was admitted: the refusal is on the stream
            stream.hung_up = True
            stream.outbox.put_nowait(None)
            return refused(hangup.refusal)
        return Response(b"Accepted", status_code=202, media_type="text/plain")

    def _end_if_revoked(self, stream_id: str) -> None:
        """A POST to this stream was refused its credential: when the stream's own credential is gone too (revoked
        or expired), end the stream now; its last event says why. Only the stream's own credential decides, so a
        stranger's POST ends no stream that is still valid."""
        stream = self._streams.get(stream_id)
        if stream is not None and self._core.gate.revoked(stream.channel.caller) is not None:
            stream.outbox.put_nowait(None)

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        for stream in self._streams.values():
            stream.outbox.put_nowait(None)
