"""One bidirectional message channel (stdio, TCP, WebSocket, HTTP+SSE): a connection's side of the protocol core.

The transport frames: it hands in each message it reads (:meth:`Channel.receive`), or says that one could not
be read whole (:meth:`Channel.too_large`, :meth:`Channel.unreadable`), and gives a ``send`` coroutine for what
goes back. Every message passes the gate first; then the core answers it: the handshake and the session it opens
(one per connection), requests run concurrently (so that ``notifications/cancelled`` and the client's answers to
server requests get through while they run), change notifications, and 2026-07-28 requests (everything in their
own ``_meta``), ``subscriptions/listen`` included.

A message refused because the connection's credential is gone (revoked or expired) is answered, and then
:meth:`Channel.receive` raises :class:`Hangup`: the transport closes the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from app.jsonrpc import (
    InvalidRequest,
    JsonRpcError,
    Message,
    error_response,
    leading_request_id,
    message_from,
    parse_json,
)
from app.protocol.changes import Listener
from app.protocol.core import ProtocolCore
from app.protocol.stateless import check_meta, check_version, is_stateless
from app.security.gate import Caller, Refusal
from app.sessions import Session
from app.sessions.store import SessionStoreUnavailable

__all__ = ["Channel", "Hangup", "SendBytes"]

log = structlog.get_logger(__name__)

SendBytes = Callable[[bytes], Awaitable[None]]


class Hangup(Exception):
    """The connection must end now: its credential is gone. The refusal was sent; the transport closes the
    connection (a WebSocket with 1008 and ``reason``)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.closes)
        self.refusal = refusal

    @property
    def reason(self) -> str:
        """A short reason for a WebSocket close frame."""
        return (self.refusal.closes or "refused").replace("_", " ")


class Channel:
    """The MCP side of one connection. Call :meth:`receive` per message and :meth:`close` at the end."""

    def __init__(self, core: ProtocolCore, caller: Caller, *, send: SendBytes, transport: str) -> None:
        self._core = core
        self.caller = caller
        self._send_bytes = send
        self._transport = transport
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[Listener] = []
        self.session: Session | None = None
        self._open = core.metrics.connections_active.labels(transport=transport)
        self._open.inc()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message (messages never interleave)."""
        async with self._send_lock:
            await self._send_bytes(orjson.dumps(message))

    async def too_large(self, head: bytes) -> None:
        """A message over the size limit, of which ``head`` was read: refused with its id when ``head`` shows it."""
        await self.send(self._core.gate.oversized().answer(leading_request_id(head)))

    async def unreadable(self, reason: str) -> None:
        """A frame that is no message at all (binary on a text channel, ...): refused, the channel goes on."""
        self._core.metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
        await self.send(error_response(None, InvalidRequest(f"Invalid Request: {reason}")))

    async def receive(self, data: bytes) -> None:
        """Handle one message the client sent.

        Raises:
            Hangup: the connection's credential is gone; the refusal was sent, and the connection must close.
        """
        limit = self._core.gate.max_message_bytes
        if len(data) > limit and len(data.rstrip()) > limit:  # a line's own newline is no part of the message
            await self.too_large(data[:4096])
            return
        try:
            payload = parse_json(data)
            if isinstance(payload, list):
                raise InvalidRequest("Invalid Request: batches are not supported on this transport")
            message = message_from(payload)
        except JsonRpcError as error:
            self._core.metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            await self.send(error_response(error.request_id, error))
            return
        refused = await self._core.gate.screen(self.caller, message)
        if refused is not None:
            await self.send(refused.answer(message.id))
            if refused.closes is not None:
                self._core.gate.cut(self._transport, refused)
                raise Hangup(refused)
            return
        if message.is_response or message.is_notification:
            await self._deliver(message)
        elif message.method == "initialize":
            await self._initialize(message)
        elif is_stateless(message):
            self._spawn(self._stateless(message))
        elif self.session is None:
            refusal = InvalidRequest("Invalid Request: send initialize first (or 2026-07-28 _meta on every request)")
            await self.send(error_response(message.id, refusal))
        else:
            self._spawn(self._request(self.session, message))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, message: Message) -> None:
        if self.session is None:
            return
        try:
            await self._core.deliver(self.session, message)
        except SessionStoreUnavailable as exc:  # nothing to answer; the server request waiting times out
            log.warning("client message not delivered", transport=self._transport, reason=str(exc))

    async def _initialize(self, message: Message) -> None:
        if self.session is not None:
            await self.send(error_response(message.id, InvalidRequest("Invalid Request: already initialized")))
            return
        answer = await self._core.initialize(message, self.caller)
        if answer.session is not None:
            self.session = answer.session
            self._forward(self._core.watch(answer.session))
        await self.send(answer.response)

    def _forward(self, listener: Listener) -> None:
        """Send what a change listener hears, until the channel closes."""
        self._listeners.append(listener)

        async def forward() -> None:
            async for change in listener.changes():
                await self.send({"jsonrpc": "2.0", "method": change.method, "params": change.params})

        self._spawn(forward())

    async def _request(self, session: Session, message: Message) -> None:
        ctx = self._core.context(message, self.caller, session, send=self.send)
        try:
            outcome = await self._core.run(message, ctx)
        except asyncio.CancelledError:
            self._core.metrics.mcp_cancellations.labels(transport=self._transport).inc()
            return  # cancelled by the client: no response is owed
        await self._core.sessions.save(session)
        await self.send(outcome.response)

    async def _stateless(self, message: Message) -> None:
        try:
            meta = check_meta(message)
            check_version(meta)
        except JsonRpcError as error:
            await self.send(error_response(message.id, error))
            return
        if message.method == "subscriptions/listen" and self._core.listens:
            subscription = self._core.listen(message)
            try:
                await self.send(subscription.ack)
                async for notification in subscription.notifications():
                    await self.send(notification)
            finally:
                self._core.forget(subscription.listener)
            return
        ctx = self._core.stateless_context(message, meta, self.caller, send=self.send)
        outcome = await self._core.run(message, ctx)
        await self.send(outcome.response)

    async def close(self) -> None:
        """The connection ended: stop its requests and listeners, and end its session."""
        self._open.dec()
        for task in list(self._tasks):
            task.cancel()
        for listener in self._listeners:
            self._core.forget(listener)
        if self.session is not None:
            try:
                await self._core.sessions.delete(self.session.id)
            except SessionStoreUnavailable as exc:  # the record expires on its own (idle timeout)
                log.warning("session not deleted", transport=self._transport, reason=str(exc))
        log.info("connection closed", transport=self._transport)
