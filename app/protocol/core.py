"""The protocol core: the MCP session logic, once, for every transport.

Transports frame messages; the core owns what the messages mean: ``initialize`` and the session it opens (the
negotiated revision, the principal and its scopes, the caller's session quota), the context a request is
answered in (handshake era or 2026-07-28, where everything comes in the request's own ``_meta``), the client's
answers and notifications, change watching, ``subscriptions/listen`` and 2025-03-26 batches (bounded here, for
every transport: :class:`BatchLimits`). Every transport
hands messages to it (through :class:`app.protocol.channel.Channel` for the stream transports) and sends back
what it answers; none builds a context itself. The gate (:mod:`app.security.gate`) decides who may send what.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sized
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import structlog

from app.jsonrpc import (
    BatchAnswerFull,
    InternalError,
    InvalidRequest,
    JsonRpcError,
    Message,
    RequestId,
    error_response,
    message_from,
)
from app.observability.metrics import Metrics
from app.protocol.changes import Change, ChangeFeed, Listener
from app.protocol.context import EMPTY, RequestContext, Send
from app.protocol.dispatcher import Dispatcher, Outcome
from app.protocol.stateless import META_CAPABILITIES, META_LOG_LEVEL, META_VERSION
from app.security.gate import Caller, Gate, Refusal
from app.sessions import Session, SessionLimitError, SessionQuotaError
from app.sessions.store import SessionBackend, SessionStoreUnavailable

__all__ = ["Answer", "BatchLimits", "ProtocolCore", "Subscription"]

log = structlog.get_logger(__name__)

# subscriptions/listen filters and the notification each one selects.
_LIST_FILTERS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}


@dataclass(frozen=True, slots=True)
class Answer:
    """The core's answer to one message: the JSON-RPC response, the HTTP status and headers a transport with
    statuses sends it with, and the session ``initialize`` opened."""

    response: dict[str, Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    session: Session | None = None

    @classmethod
    def refusal(cls, refusal: Refusal, request_id: RequestId | None) -> Answer:
        return cls(refusal.answer(request_id), refusal.status, refusal.headers)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one 2025-03-26 batch may hold and cost (``ERLMCP_MAX_BATCH_*``; the defaults and their reasons are the
    settings'): at most ``max_items`` messages (a larger batch is refused whole), ``concurrency`` requests of it
    running at once, and ``max_response_bytes`` of answers (the requests past it are answered with an error)."""

    max_items: int = 100
    concurrency: int = 8
    max_response_bytes: int = 4 * 1024 * 1024


class _AnswerBudget:
    """The bytes of answers a batch may still return. An answer that would pass the budget is replaced by an error
    saying so, and from then on the budget is spent: the requests not yet started are not run (errors are kept:
    they are small, and their ids come from the request, whose size is limited)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.spent, self.cut = limit, 0, 0
        self.exhausted = False

    def _error(self, request_id: RequestId | None, why: str) -> dict[str, Any]:
        self.cut += 1
        error = BatchAnswerFull(f"Batch answer full: {why}", data={"maxBatchResponseBytes": self.limit})
        return self.keep(error_response(request_id, error))

    def not_run(self, request_id: RequestId) -> dict[str, Any]:
        why = (
            f"not run: this batch's answers used up the {self.limit} bytes one batch may return; "
            "send this request again on its own or in another batch"
        )
        return self._error(request_id, why)

    def keep(self, response: dict[str, Any]) -> dict[str, Any]:
        """``response``, counted; or, when it would take the answers past the budget, the error saying so."""
        size = len(orjson.dumps(response))
        if "error" not in response and self.spent + size > self.limit:
            why = (
                f"the answer ({size} bytes) was dropped: it would take this batch's answers past {self.limit} "
                "bytes, the most one batch returns; send this request again on its own"
            )
            self.exhausted = True
            return self._error(response.get("id"), why)
        self.spent += size
        self.exhausted = self.exhausted or self.spent >= self.limit
        return response


@dataclass(eq=False)
class Subscription:
    """A ``subscriptions/listen`` stream: the acknowledgement, then the notifications asked for, tagged."""

    ack: dict[str, Any]
    listener: Listener
    tag: dict[str, Any]

    async def notifications(self) -> AsyncIterator[dict[str, Any]]:
        """The tagged change notifications, as they come, until the feed closes."""
        async for change in self.listener.changes():
            params = {**change.params, "_meta": {**change.params.get("_meta", {}), **self.tag}}
            yield {"jsonrpc": "2.0", "method": change.method, "params": params}


def meta_of(message: Message) -> Mapping[str, Any]:
    meta = message.params.get("_meta")
    return meta if isinstance(meta, dict) else EMPTY


class ProtocolCore:
    """The MCP side of the server, shared by every transport and connection."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        sessions: SessionBackend,
        gate: Gate,
        metrics: Metrics,
        client_request_timeout: float = 60.0,
        batch_limits: BatchLimits | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self.gate = gate
        self.metrics = metrics
        self.client_request_timeout = client_request_timeout
        self.batch_limits = batch_limits or BatchLimits()
        self._feed = ChangeFeed()

    # -- sessions --------------------------------------------------------------------------------------------

    async def initialize(self, message: Message, caller: Caller, *, keep_session: bool = True) -> Answer:
        """Answer ``initialize`` and open the session it asks for, within the caller's limit and quota
        (``keep_session`` False: HTTP's stateless mode, where every request stands alone)."""
        assert message.id is not None
        refused = self.gate.may_initialize(caller)
        if refused is not None:
            return Answer.refusal(refused, message.id)
        ctx = RequestContext(request_id=message.id, method="initialize", principal=caller.principal)
        outcome = await self.dispatcher.dispatch(message, ctx)
        result = outcome.response.get("result")
        if result is None or not keep_session:
            self.count(outcome)
            return Answer(outcome.response)
        try:
            session = await self.sessions.create(
                protocol_version=result["protocolVersion"],
                client_info=dict(message.params.get("clientInfo") or {}),
                client_capabilities=dict(message.params.get("capabilities") or {}),
                principal=caller.principal,
                owner=caller.client,
                quota=self.gate.session_quota(caller),
            )
        except (SessionLimitError, SessionStoreUnavailable) as exc:
            self.count(replace(outcome, status="error"))  # no session opened: the initialize failed
            return self._not_opened(exc, message.id)
        self.count(outcome)
        return Answer(outcome.response, headers={"Mcp-Session-Id": session.id}, session=session)

    def _not_opened(self, exc: Exception, request_id: RequestId) -> Answer:
        """Why a session could not be opened: the caller's quota, the session table, or the store being away."""
        if isinstance(exc, SessionQuotaError):
            return Answer.refusal(self.gate.quota_exceeded(exc), request_id)
        if isinstance(exc, SessionLimitError):
            full = InvalidRequest(f"Service Unavailable: {exc}", data={"retryAfter": 5})
            return Answer(error_response(request_id, full), 503, {"Retry-After": "5"})
        assert isinstance(exc, SessionStoreUnavailable)  # Redis is away: say so at once; the client may try again
        away = InternalError(f"Service Unavailable: {exc}; retry later", data={"retryAfter": exc.retry_after})
        return Answer(error_response(request_id, away), 503, {"Retry-After": str(exc.retry_after)})

    async def session_of(self, session_id: str, caller: Caller) -> Session | None:
        """The caller's own session with this id; None for an unknown, ended or another principal's session."""
        session = await self.sessions.get(session_id)
        return session if session is not None and session.principal == caller.principal else None

    async def deliver(self, session: Session, message: Message) -> bool:
        """A client's response to a server request, or its notification; False for a response nobody waits for."""
        if message.is_response:
            return await self.sessions.deliver_response(session, message.id, message.payload)
        await self.sessions.deliver_notification(session, message.method or "", message.params)
        await self.sessions.save(session)
        self.metrics.mcp_requests.labels(method="(notification)", outcome="ok").inc()
        return True

    # -- requests --------------------------------------------------------------------------------------------

    def context(
        self,
        message: Message,
        caller: Caller,
        session: Session,
        *,
        send: Send | None,
        end_connection: Callable[[], Any] | None = None,
    ) -> RequestContext:
        """The context of a handshake-era request in ``session``."""
        assert message.id is not None
        return RequestContext(
            request_id=message.id,
            method=message.method or "",
            meta=meta_of(message),
            session=session,
            send=send,
            protocol_version=session.protocol_version,
            client_request_timeout=self.client_request_timeout,
            end_connection=end_connection,
            request_client_capabilities=EMPTY,  # a session's come from its initialize
            announce=self.announce,
            principal=caller.principal,
            scopes=caller.scopes,
        )

    def stateless_context(
        self, message: Message, meta: Mapping[str, Any], caller: Caller, *, send: Send | None
    ) -> RequestContext:
        """The context of a 2026-07-28 request (``meta`` checked by :func:`app.protocol.stateless.check_meta`):
        capabilities and log level come with the request itself; the principal and its scopes are the caller's."""
        assert message.id is not None
        level = meta.get(META_LOG_LEVEL)
        return RequestContext(
            request_id=message.id,
            method=message.method or "",
            meta=meta,
            send=send,
            principal=caller.principal,
            scopes=caller.scopes,
            protocol_version=meta[META_VERSION],
            stateless=True,
            request_client_capabilities=meta[META_CAPABILITIES],
            request_log_level=level if isinstance(level, str) else None,
            announce=self.announce,
        )

    async def run(self, message: Message, ctx: RequestContext) -> Outcome:
        """Answer one request in its context (cancellable through its session while it runs); counted."""
        assert message.id is not None
        session = ctx.session
        if session is not None:
            current = asyncio.current_task()
            assert current is not None
            session.in_flight[message.id] = current
        try:
            if ctx.stateless:
                outcome = await self.dispatcher.dispatch_stateless(message, ctx)
            else:
                outcome = await self.dispatcher.dispatch(message, ctx)
        finally:
            if session is not None:
                session.in_flight.pop(message.id, None)
        self.count(outcome)
        return outcome

    def count(self, outcome: Outcome) -> None:
        self.metrics.count_outcome(outcome.method, outcome.status, outcome.tool, outcome.seconds)

    def batch_refusal(self, items: Sized) -> Refusal | None:
        """The refusal of a batch as a whole, before any of it runs or takes its rate tokens: 413 for more messages
        than :attr:`BatchLimits.max_items`."""
        limit = self.batch_limits.max_items
        if len(items) <= limit:
            return None
        why = f"a batch of {len(items)} messages is more than the {limit} this server takes in one batch"
        too_many = InvalidRequest(f"Invalid Request: {why}; send smaller batches", data={"maxBatchItems": limit})
        return Refusal(413, too_many)

    async def batch(self, items: list[Any], session: Session, caller: Caller) -> list[dict[str, Any]]:
        """A 2025-03-26 JSON-RPC batch in ``session`` (screened by :meth:`batch_refusal` and its rate tokens
        taken): the answers, in the order of the items. Its requests run at most ``concurrency`` at once, and its
        answers stop at ``max_response_bytes``: the requests past it are answered with an error saying so, those
        not yet started without running. A batch over ``max_items`` is answered with the refusal alone."""
        too_many = self.batch_refusal(items)
        if too_many is not None:
            return [too_many.answer(None)]
        limits = self.batch_limits
        budget = _AnswerBudget(limits.max_response_bytes)
        answers: list[dict[str, Any] | None] = [None] * len(items)  # None: no answer is owed
        requests: list[tuple[int, Message]] = []
        for index, item in enumerate(items):
            try:
                message = message_from(item)
            except JsonRpcError as error:
                answers[index] = budget.keep(error_response(error.request_id, error))
                continue
            if message.method == "initialize":
                cannot = InvalidRequest("Invalid Request: initialize cannot be batched")
                answers[index] = budget.keep(error_response(message.id, cannot))
                continue
            refused = self.gate.out_of_scope(caller, message)
            if refused is not None:
                answers[index] = budget.keep(refused.answer(message.id))
            elif message.is_response or message.is_notification:
                await self.deliver(session, message)
            else:
                requests.append((index, message))

        turns = asyncio.Semaphore(limits.concurrency)

        async def answer(index: int, message: Message) -> None:
            assert message.id is not None
            async with turns:
                if budget.exhausted:
                    answers[index] = budget.not_run(message.id)
                    return
                outcome = await self.run(message, self.context(message, caller, session, send=None))
            answers[index] = budget.keep(outcome.response)

        # An item the client cancels (notifications/cancelled) is owed no answer; the others are answered.
        for done in await asyncio.gather(*(answer(i, m) for i, m in requests), return_exceptions=True):
            if isinstance(done, asyncio.CancelledError):
                self.metrics.mcp_cancellations.labels(transport="streamable-http").inc()
            elif isinstance(done, BaseException):
                raise done
        if budget.cut:
            log.warning(
                "batch answers cut at the byte budget",
                principal=caller.principal,
                items=len(items),
                cut=budget.cut,
                max_batch_response_bytes=budget.limit,
            )
        return [kept for kept in answers if kept is not None]

    # -- changes ---------------------------------------------------------------------------------------------

    async def announce(self, method: str, params: Mapping[str, Any]) -> int:
        """Publish a change notification to every client listening for it; how many listeners got it."""
        return await self._feed.publish(Change(method, dict(params)))

    def watch(self, session: Session) -> Listener:
        """The changes a handshake-era session hears of: list changes, and updates of the resources it subscribed
        to. :meth:`forget` it when the connection or stream ends."""
        return self._feed.listen(
            lambda change: (
                change.method != "notifications/resources/updated" or change.params.get("uri") in session.subscriptions
            )
        )

    def forget(self, listener: Listener) -> None:
        self._feed.forget(listener)

    @property
    def listens(self) -> bool:
        """Whether ``subscriptions/listen`` is offered (the catalogue can change)."""
        return self.dispatcher.announces_changes

    def listen(self, message: Message) -> Subscription:
        """``subscriptions/listen`` (2026-07-28): what will be delivered, and the listener that delivers it."""
        asked = message.params.get("notifications")
        asked = asked if isinstance(asked, dict) else {}
        honoured: dict[str, Any] = {key: True for key in _LIST_FILTERS if asked.get(key) is True}
        uris = asked.get("resourceSubscriptions")
        if isinstance(uris, list) and all(isinstance(uri, str) for uri in uris) and uris:
            honoured["resourceSubscriptions"] = list(uris)
        methods = {_LIST_FILTERS[key] for key in honoured if key in _LIST_FILTERS}
        watched = set(honoured.get("resourceSubscriptions", []))

        def wants(change: Change) -> bool:
            if change.method == "notifications/resources/updated":
                return change.params.get("uri") in watched
            return change.method in methods

        tag = {"io.modelcontextprotocol/subscriptionId": message.id}
        ack = {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"_meta": tag, "notifications": honoured},
        }
        self.metrics.mcp_requests.labels(method="subscriptions/listen", outcome="ok").inc()
        return Subscription(ack, self._feed.listen(wants), tag)

    # -- the server's life -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """End the long-lived streams (change feeds, tasks, GET streams) so that the server can stop. A GET stream's
        connections end but the stream does not: its client resumes it, and with Redis another replica carries it
        on (the stream's writer is gone), from where it was."""
        self._feed.close()
        self.dispatcher.close()
        for session in self.sessions.all():
            if session.standalone is not None:
                asyncio.get_running_loop().create_task(session.standalone.stream.disconnect())

    async def aclose(self) -> None:
        """Release the session store (after the listeners stopped)."""
        await self.sessions.close()
