"""One bidirectional message channel (stdio, TCP, WebSocket, HTTP+SSE): the protocol core, transport-free.

The transport hands in each message it reads and a ``send`` coroutine for what goes back; everything else is
here: the handshake and the session it opens, requests run concurrently (so that ``notifications/cancelled``
and the client's answers to server requests get through while they run), change notifications. A message that
carries the 2026-07-28 ``_meta`` is served statelessly, as on HTTP.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from app.jsonrpc import (
    InternalError,
    InvalidRequest,
    JsonRpcError,
    Message,
    RateLimited,
    error_response,
    message_from,
    parse_json,
)
from app.observability.metrics import Metrics
from app.protocol.changes import Change, ChangeFeed, Listener
from app.protocol.context import RequestContext
from app.protocol.dispatcher import Dispatcher, Outcome
from app.security.keys import ALL_TOOLS
from app.sessions import Session, SessionLimitError
from app.sessions.store import SessionBackend, SessionStoreUnavailable
from app.transports.headers import META_VERSION, check_meta, check_version, stateless_context

__all__ = ["MessageConnection", "Send"]

log = structlog.get_logger(__name__)

Send = Callable[[bytes], Awaitable[None]]


class MessageConnection:
    """The MCP side of one connection. Call :meth:`receive` per message and :meth:`close` at the end."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        sessions: SessionBackend,
        feed: ChangeFeed,
        metrics: Metrics,
        send: Send,
        principal: str,
        transport: str,
        client_request_timeout: float = 60.0,
        scopes: frozenset[str] = ALL_TOOLS,
        budget: Callable[[], Awaitable[float]] | None = None,
        initialize_wait: Callable[[], float] | None = None,
    ) -> None:
        self._scopes = scopes
        self._budget = budget  # the client's request budget: 0 (go on) or the seconds to wait
        self._initialize_wait = initialize_wait  # the endpoint's per-caller initialize limit, as over HTTP
        self._dispatcher = dispatcher
        self._sessions = sessions
        self._feed = feed
        self._metrics = metrics
        self._send_bytes = send
        self._principal = principal
        self._transport = transport
        self._timeout = client_request_timeout
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: Listener | None = None
        self._forwarder: asyncio.Task[None] | None = None
        self.session: Session | None = None
        self._open = metrics.connections_active.labels(transport=transport)
        self._open.inc()

    async def send(self, message: dict[str, Any]) -> None:
        """Write one message (messages never interleave)."""
        async with self._send_lock:
            await self._send_bytes(orjson.dumps(message))

    async def receive(self, data: bytes) -> None:
        """Handle one message the client sent."""
        try:
            payload = parse_json(data)
            if isinstance(payload, list):
                raise InvalidRequest("Invalid Request: batches are not supported on this transport")
            message = message_from(payload)
        except JsonRpcError as error:
            self._metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            await self.send(error_response(error.request_id, error))
            return
        if message.is_response or message.is_notification:
            if self.session is not None:
                try:
                    if message.is_response:
                        await self._sessions.deliver_response(self.session, message.id, message.payload)
                    else:
                        await self._sessions.deliver_notification(self.session, message.method or "", message.params)
                except SessionStoreUnavailable as exc:  # nothing to answer; the server request waiting times out
                    log.warning("client message not delivered", transport=self._transport, reason=str(exc))
            return
        if self._budget is not None:
            wait = await self._budget()
            if wait > 0:
                self._metrics.rate_limited.inc()
                retry = max(1, math.ceil(wait))
                limited = RateLimited(f"Too Many Requests: this client is over its request rate; retry in {retry} s",
                                      data={"retryAfter": retry})  # fmt: skip
                await self.send(error_response(message.id, limited))
                return
        if message.method == "initialize":
            await self._initialize(message)
        elif isinstance(message.params.get("_meta"), dict) and META_VERSION in message.params["_meta"]:
            self._spawn(self._stateless(message))
        elif self.session is None:
            refusal = InvalidRequest("Invalid Request: send initialize first (or 2026-07-28 _meta on every request)")
            await self.send(error_response(message.id, refusal))
        else:
            self._spawn(self._request(self.session, message))

    def _spawn(self, coroutine: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _initialize(self, message: Message) -> None:
        assert message.id is not None
        if self.session is not None:
            await self.send(error_response(message.id, InvalidRequest("Invalid Request: already initialized")))
            return
        wait = self._initialize_wait() if self._initialize_wait is not None else 0.0
        if wait > 0:  # one connection per session: many connections must not take the session table
            retry = max(1, math.ceil(wait))
            limited = RateLimited(f"Too Many Requests: initialize is limited per client; retry in {retry} s",
                                  data={"retryAfter": retry})  # fmt: skip
            await self.send(error_response(message.id, limited))
            return
        outcome = await self._dispatcher.dispatch(message, RequestContext(request_id=message.id, method="initialize"))
        self._count(outcome)
        result = outcome.response.get("result")
        if result is not None:
            try:
                self.session = await self._sessions.create(
                    protocol_version=result["protocolVersion"],
                    client_info=dict(message.params.get("clientInfo") or {}),
                    client_capabilities=dict(message.params.get("capabilities") or {}),
                    principal=self._principal,
                )
            except SessionLimitError as exc:
                await self.send(error_response(message.id, InvalidRequest(f"Service unavailable: {exc}")))
                return
            except SessionStoreUnavailable as exc:  # Redis is away: say so at once; the client may try again
                unavailable = InternalError(f"Service Unavailable: {exc}; retry later",
                                            data={"retryAfter": exc.retry_after})  # fmt: skip
                await self.send(error_response(message.id, unavailable))
                return
            self._watch_changes(self.session)
        await self.send(outcome.response)

    def _watch_changes(self, session: Session) -> None:
        self._listener = self._feed.listen(
            lambda change: (
                change.method != "notifications/resources/updated" or change.params.get("uri") in session.subscriptions
            )
        )

        async def forward(listener: Listener) -> None:
            async for change in listener.changes():
                await self.send({"jsonrpc": "2.0", "method": change.method, "params": change.params})

        self._forwarder = asyncio.ensure_future(forward(self._listener))

    async def _announce(self, method: str, params: Any) -> int:
        return await self._feed.publish(Change(method, dict(params)))

    async def _request(self, session: Session, message: Message) -> None:
        assert message.id is not None
        meta = message.params.get("_meta")
        ctx = RequestContext(
            request_id=message.id,
            method=message.method or "",
            meta=meta if isinstance(meta, dict) else {},
            session=session,
            send=self.send,
            protocol_version=session.protocol_version,
            client_request_timeout=self._timeout,
            announce=self._announce,
            scopes=self._scopes,
        )
        current = asyncio.current_task()
        assert current is not None
        session.in_flight[message.id] = current
        try:
            outcome = await self._dispatcher.dispatch(message, ctx)
        except asyncio.CancelledError:
            self._metrics.mcp_cancellations.labels(transport=self._transport).inc()
            return  # cancelled by the client: no response is owed
        finally:
            session.in_flight.pop(message.id, None)
        await self._sessions.save(session)
        self._count(outcome)
        await self.send(outcome.response)

    async def _stateless(self, message: Message) -> None:
        assert message.id is not None
        try:
            meta = check_meta(message)
            check_version(meta)
        except JsonRpcError as error:
            await self.send(error_response(message.id, error))
            return
        ctx = stateless_context(message, meta, send=self.send, announce=self._announce, scopes=self._scopes)
        outcome = await self._dispatcher.dispatch_stateless(message, ctx)
        self._count(outcome)
        await self.send(outcome.response)

    def _count(self, outcome: Outcome) -> None:
        self._metrics.count_outcome(outcome.method, outcome.status, outcome.tool, outcome.seconds)

    async def close(self) -> None:
        """The connection ended: stop its requests and end its session."""
        self._open.dec()
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            self._feed.forget(self._listener)
        if self._forwarder is not None:
            self._forwarder.cancel()
        if self.session is not None:
            try:
                await self._sessions.delete(self.session.id)
            except SessionStoreUnavailable as exc:  # the record expires on its own (idle timeout)
                log.warning("session not deleted", transport=self._transport, reason=str(exc))
        log.info("connection closed", transport=self._transport)
