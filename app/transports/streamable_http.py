"""The streamable HTTP transport (MCP 2025-03-26 to 2025-11-25) at one endpoint, ``/mcp``.

- POST carries one JSON-RPC message. A request is answered with ``application/json`` when its handler sends
  nothing before the response, and with an SSE stream (a priming event, related notifications and requests,
  then the response) when it does. Notifications and responses from the client get 202.
- ``initialize`` opens a session: the response carries ``Mcp-Session-Id``, which every later request must
  echo (400 without it, 404 for an unknown or ended one). Sessions are bound to the caller's credentials.
- GET opens the session's stream for server-initiated messages, or resumes a stream from ``Last-Event-ID``.
- DELETE ends the session.

Every refusal carries the right HTTP status and a JSON-RPC error body that says what was wrong.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from app.jsonrpc import (
    INVALID_REQUEST,
    InternalError,
    InvalidRequest,
    JsonRpcError,
    Message,
    error_response,
    message_from,
    parse_json,
)
from app.observability.metrics import Metrics
from app.protocol import HANDSHAKE_REVISIONS
from app.protocol.changes import Change, ChangeFeed
from app.protocol.context import RequestContext
from app.protocol.dispatcher import Dispatcher, Outcome
from app.security import Authenticator
from app.security.clients import Network, client_address
from app.security.keys import ALL_TOOLS, allows_tool
from app.security.origin import OriginPolicy
from app.security.ratelimit import RateLimiter, WindowLimiter
from app.sessions import EventStream, Session, SessionLimitError
from app.sessions.events import parse_event_id
from app.sessions.store import SessionBackend, SessionStoreUnavailable
from app.transports.connection import MessageConnection, Send
from app.transports.headers import check_headers, check_meta, check_version, stateless_context
from app.transports.sse import SSE_HEADERS, format_event, format_retry, with_keepalive

__all__ = ["McpEndpoint", "TransportOptions"]

_LIMITER_RETRY_SECONDS = 1.0  # while the shared budget cannot be read, it is tried again this often

log = structlog.get_logger(__name__)

_JSON = "application/json"
_SSE = "text/event-stream"
SESSION_HEADER = "mcp-session-id"


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON, headers=headers)


def _refusal(status: int, message: str, headers: dict[str, str] | None = None, data: Any = None) -> Response:
    return _json(error_response(None, InvalidRequest(message, data=data)), status, headers)


# subscriptions/listen filters and the notification each one selects.
_LIST_FILTERS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}


def _stateless_status(response: dict[str, Any]) -> int:
    """The HTTP status of a 2026-07-28 response: 404 for an unknown method, 400 for a bad request, else 200."""
    code = (response.get("error") or {}).get("code")
    if code == -32601:
        return 404
    if code in {-32700, -32600, -32602, -32020, -32021, -32022}:
        return 400
    return 200


def _meta_of(message: Message) -> dict[str, Any]:
    meta = message.params.get("_meta")
    return meta if isinstance(meta, dict) else {}


SCOPES_KEY = "erlmcp.scopes"  # where the caller's scopes wait in the ASGI scope


def scopes_of(request: Request) -> frozenset[str]:
    """What the authenticated caller may use (everything when authentication is off)."""
    scopes: frozenset[str] = request.scope.get(SCOPES_KEY, ALL_TOOLS)
    return scopes


def _stream_only(accept: set[str]) -> bool:
    """Whether the client accepts an event stream and no JSON body."""
    return _SSE in accept and not accept & {_JSON, "application/*", "*/*"}


def _media_types(accept: str) -> set[str]:
    return {part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()}


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Limits and timings of the transport."""

    max_request_bytes: int
    sse_retry_ms: int = 1000
    keepalive_seconds: float = 15.0
    stateless: bool = False  # no sessions: every request stands alone (Cloud Run-style autoscaling)
    initialize_per_minute: int = 60  # per caller (key and address)
    client_request_timeout: float = 60.0


class McpEndpoint:
    """Handles every request to ``/mcp``."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        sessions: SessionBackend,
        authenticator: Authenticator,
        origins: OriginPolicy,
        metrics: Metrics,
        options: TransportOptions,
        limiter: RateLimiter | None = None,
        trusted_proxies: Sequence[Network] = (),
    ) -> None:
        self._limiter, self._trusted_proxies = limiter, tuple(trusted_proxies)
        self._limiter_failing, self._limiter_retry_at = False, 0.0
        self._dispatcher = dispatcher
        self._sessions = sessions
        self._auth = authenticator
        self._origins = origins
        self._metrics = metrics
        self._streams_open = metrics.connections_active.labels(transport="streamable-http")  # GET and listen streams
        self._options = options
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self._feed = ChangeFeed()
        self._initialize_limit = WindowLimiter(options.initialize_per_minute)

    def connection(
        self,
        *,
        send: Send,
        principal: str,
        transport: str,
        scopes: frozenset[str] = ALL_TOOLS,
        address: str | None = None,
    ) -> MessageConnection:
        """The protocol side of a new stream connection (stdio, TCP, WebSocket, HTTP+SSE) sharing this endpoint's
        sessions, change feed and dispatcher."""
        return MessageConnection(
            dispatcher=self._dispatcher,
            sessions=self._sessions,
            feed=self._feed,
            metrics=self._metrics,
            send=send,
            principal=principal,
            transport=transport,
            client_request_timeout=self._options.client_request_timeout,
            scopes=scopes,
            budget=self._budget_of(self._client_key(principal, address, {})),
            initialize_wait=lambda: self._initialize_limit.allow(self._initialize_caller(principal, address)),
        )

    @staticmethod
    def _initialize_caller(principal: str, address: str | None) -> str:
        """Whom the initialize limit counts: the principal at its address, on every transport."""
        return f"{principal}@{address or '-'}"

    def _client_key(self, principal: str, peer: str | None, headers: Mapping[str, str]) -> str:
        """Whose budget a request takes from: the principal, or the address for anonymous callers."""
        if principal != "anonymous":
            return principal
        return "ip:" + client_address(peer, headers, self._trusted_proxies)

    async def _take(self, client: str) -> float:
        """0 when ``client`` may go on (and one request is counted), else the seconds to wait. Should the shared
        budget in Redis be unreachable, requests go on unlimited and the log says so."""
        assert self._limiter is not None
        loop = asyncio.get_running_loop()
        if loop.time() < self._limiter_retry_at:  # it failed a moment ago: no request waits on it again yet
            return 0.0
        try:
            wait = await self._limiter.take(client)
        except (RedisError, OSError) as exc:
            if not self._limiter_failing:
                log.warning("rate limit not enforced: the shared budget cannot be read", error=str(exc))
            self._limiter_failing, self._limiter_retry_at = True, loop.time() + _LIMITER_RETRY_SECONDS
            return 0.0
        if self._limiter_failing:
            log.info("rate limit enforced again: the shared budget can be read")
            self._limiter_failing = False
        return wait

    def _budget_of(self, client: str) -> Callable[[], Awaitable[float]] | None:
        """A stream connection's request budget: the same bucket as the client's HTTP requests."""
        return functools.partial(self._take, client) if self._limiter is not None else None

    @property
    def limits_rate(self) -> bool:
        """Whether clients have a request budget."""
        return self._limiter is not None

    async def rate_limited(self, principal: str, request: Request) -> Response | None:
        """The 429 for a client over its request budget (per principal; per address when anonymous), or None."""
        peer = request.client.host if request.client else None
        wait = await self._take(self._client_key(principal, peer, request.headers))
        if wait <= 0:
            return None
        self._metrics.rate_limited.inc()
        return _refusal(429, f"Too Many Requests: this client is over its request rate; retry in {wait:.1f} s",
                        headers={"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip

    @property
    def authenticator(self) -> Authenticator:
        """Who may call (the other HTTP transports check the same keys)."""
        return self._auth

    @property
    def origins(self) -> OriginPolicy:
        """Which Host and Origin headers are accepted (the other HTTP transports check the same)."""
        return self._origins

    async def aclose(self) -> None:
        """Release the session store (after the listeners stopped)."""
        await self._sessions.close()

    async def announce(self, method: str, params: Mapping[str, Any]) -> int:
        """Publish a change notification to every client listening for it; how many listeners got it."""
        return await self._feed.publish(Change(method, dict(params)))

    def shutdown(self) -> None:
        """End the long-lived streams (GET streams, listen streams) so that the server can stop; every stream that
        ends from now on ends with a ``retry`` hint."""
        self._stopping = True
        self._feed.close()
        self._dispatcher.close()
        for session in self._sessions.all():
            if session.standalone is not None:
                asyncio.get_running_loop().create_task(session.standalone.close())

    async def handle(self, request: Request) -> Response:
        """Answer one HTTP request to the MCP endpoint."""
        refused = self._origins.check(request.headers)
        if refused is not None:
            return _refusal(refused.status, refused.message)
        verdict = await self._auth.authenticate(request.headers)
        if verdict.principal is None:
            self._metrics.auth_failures.inc()
            return _refusal(verdict.status, verdict.message, headers=dict(verdict.headers))
        if self._limiter is not None:
            limited = await self.rate_limited(verdict.principal, request)
            if limited is not None:
                return limited
        request.scope[SCOPES_KEY] = verdict.scopes  # what this caller may use, for the request context
        version = request.headers.get("mcp-protocol-version", "").strip()
        if request.method in {"GET", "DELETE"} and self._options.stateless:
            return _refusal(405, f"Method Not Allowed: this server keeps no sessions, so {request.method} has no use",
                            headers={"Allow": "POST"})  # fmt: skip
        if request.method in {"GET", "DELETE"} and version and version not in HANDSHAKE_REVISIONS:
            return _refusal(405, f"Method Not Allowed: {request.method} has no use in protocol {version}",
                            headers={"Allow": "POST"})  # fmt: skip
        try:
            if request.method == "POST":
                return await self._post(request, version)
            if request.method == "GET":
                return await self._get(request)
            if request.method == "DELETE":
                return await self._delete(request)
        except SessionStoreUnavailable as exc:  # Redis is away: say so at once, and when to try again
            return _json(error_response(None, InternalError(f"Service Unavailable: {exc}; retry later")), 503,
                         {"Retry-After": str(exc.retry_after)})  # fmt: skip
        return _refusal(405, f"Method Not Allowed: {request.method} /mcp", headers={"Allow": "GET, POST, DELETE"})

    # -- sessions ---------------------------------------------------------------------------------------------

    async def _session(self, request: Request) -> Session | Response:
        session_id = request.headers.get(SESSION_HEADER)
        if not session_id:
            return _refusal(400, "Bad Request: Missing Mcp-Session-Id header; send initialize first")
        session = await self._sessions.get(session_id)
        if session is None or session.principal != self._auth.principal(request.headers):
            return _refusal(404, "Session not found: it ended or never existed; send initialize again")
        return session

    async def _delete(self, request: Request) -> Response:
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        await self._sessions.delete(found.id)
        return Response(status_code=200)

    # -- POST -------------------------------------------------------------------------------------------------

    async def _post(self, request: Request, version: str) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != _JSON:
            return _refusal(415, f"Unsupported Media Type: Content-Type must be application/json, not {content_type!r}")
        accept = _media_types(request.headers.get("accept", ""))
        if accept and not accept & {_JSON, _SSE, "application/*", "*/*"}:
            return _refusal(406, "Not Acceptable: the Accept header must allow application/json or text/event-stream")
        body = await self._read_body(request)
        if body is None:
            return _refusal(413, f"Payload Too Large: the body exceeds {self._options.max_request_bytes} bytes")
        try:
            payload = parse_json(body)
            if isinstance(payload, list):
                return await self._batch(request, payload)
            message = message_from(payload)
        except JsonRpcError as error:
            self._metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            return _json(error_response(error.request_id, error), 400)
        if version and version not in HANDSHAKE_REVISIONS:
            # Not a handshake revision: a 2026-07-28 (stateless) request, or one to refuse as such.
            return await self._stateless(request, message, wants_stream=bool(accept & {_SSE}),
                                         stream_only=_stream_only(accept))  # fmt: skip
        refused = self._out_of_scope(request, message)
        if refused is not None:
            return refused
        if message.method == "initialize" and not message.is_notification:
            return await self._initialize(request, message)
        found = self._ephemeral_session(request, version) if self._options.stateless else await self._session(request)
        if isinstance(found, Response):
            return found
        if message.is_response:
            return await self._client_response(found, message)
        if message.is_notification:
            await self._notification(found, message)
            return Response(status_code=202)
        wants_stream = bool(accept & {_SSE})
        return await self._request(request, found, message, wants_stream, stream_only=_stream_only(accept))

    def _out_of_scope(self, request: Request, message: Message) -> Response | None:
        """403 ``insufficient_scope`` (RFC 6750) for a tools/call of a tool the caller's scopes do not cover."""
        name = message.params.get("name") if message.method == "tools/call" else None
        if not isinstance(name, str) or self._dispatcher.tool_schema(name) is None:
            return None
        if allows_tool(scopes_of(request), name):
            return None
        challenge = f'Bearer realm="erlmcp", error="insufficient_scope", scope="tools:{name}"'
        return _refusal(403, f"Forbidden: calling {name!r} needs the scope tools:{name}",
                        headers={"WWW-Authenticate": challenge})  # fmt: skip

    def _ephemeral_session(self, request: Request, version: str) -> Session:
        """Stateless mode: a session of one request, never stored (no server requests, no resumption)."""
        return Session(
            id="",
            protocol_version=version or HANDSHAKE_REVISIONS[-1],
            client_info={},
            client_capabilities={},
            principal=self._auth.principal(request.headers),
            last_seen=0.0,
        )

    async def _initialize(self, request: Request, message: Message) -> Response:
        assert message.id is not None
        caller = self._initialize_caller(
            self._auth.principal(request.headers), request.client.host if request.client else None
        )
        wait = self._initialize_limit.allow(caller)
        if wait > 0:
            return _refusal(429, "Too Many Requests: initialize is limited per client; retry later",
                            headers={"Retry-After": str(max(1, round(wait)))})  # fmt: skip
        ctx = RequestContext(request_id=message.id, method="initialize")
        outcome = await self._dispatcher.dispatch(message, ctx)
        self._count(outcome)
        request.scope["erlmcp"] = {"mcp_method": "initialize", "mcp_outcome": outcome.status}
        result = outcome.response.get("result")
        if result is None or self._options.stateless:
            return _json(outcome.response)
        try:
            session = await self._sessions.create(
                protocol_version=result["protocolVersion"],
                client_info=dict(message.params.get("clientInfo") or {}),
                client_capabilities=dict(message.params.get("capabilities") or {}),
                principal=self._auth.principal(request.headers),
            )
        except SessionLimitError as exc:
            return _refusal(503, f"Service Unavailable: {exc}", headers={"Retry-After": "5"})
        return _json(outcome.response, headers={"Mcp-Session-Id": session.id})

    async def _client_response(self, session: Session, message: Message) -> Response:
        if not await self._sessions.deliver_response(session, message.id, message.payload):
            return _refusal(400, f"Bad Request: no request with id {message.id!r} is waiting for a response")
        return Response(status_code=202)

    async def _notification(self, session: Session, message: Message) -> None:
        await self._sessions.deliver_notification(session, message.method or "", message.params)
        await self._sessions.save(session)
        self._metrics.mcp_requests.labels(method="(notification)", outcome="ok").inc()

    async def _request(
        self, request: Request, session: Session, message: Message, wants_stream: bool, *, stream_only: bool = False
    ) -> Response:
        assert message.id is not None
        # What the handler sends before its response (None: end the HTTP connection); made on the first send,
        # since most requests send nothing but their response.
        outbox: asyncio.Queue[dict[str, Any] | None] | None = None
        # Woken by the first message the handler sends, or by its end: whichever comes first decides between
        # a JSON response and an event stream (one future, no extra task, on the hot path).
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def rouse(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        async def send(item: dict[str, Any] | None) -> None:
            nonlocal outbox
            if outbox is None:
                outbox = asyncio.Queue()
            outbox.put_nowait(item)
            rouse()

        async def end_connection() -> None:
            await send(None)

        ctx = RequestContext(
            request_id=message.id,
            method=message.method or "",
            meta=_meta_of(message),
            session=session,
            send=send if wants_stream else None,
            protocol_version=session.protocol_version,
            client_request_timeout=self._options.client_request_timeout,
            end_connection=end_connection if wants_stream else None,
            announce=self.announce,
            scopes=scopes_of(request),
        )
        task = asyncio.create_task(self._dispatcher.dispatch(message, ctx))
        session.in_flight[message.id] = task
        task.add_done_callback(lambda _: session.in_flight.pop(message.id, None))  # type: ignore[arg-type]
        task.add_done_callback(rouse)
        await wake
        if task.done() and outbox is None and not stream_only:
            try:
                outcome = task.result()
            except asyncio.CancelledError:
                self._metrics.mcp_cancellations.labels(transport="streamable-http").inc()
                return Response(status_code=204)  # cancelled by the client: no response is owed
            if session.id:
                await self._sessions.save(session)
            return self._finish(request, outcome, _json(outcome.response))
        if outbox is None:  # finished without sending, but the client takes only event streams
            outbox = asyncio.Queue()
        stream = self._sessions.new_stream(session) if session.id else EventStream()
        pump = asyncio.create_task(self._pump(request, session, stream, outbox, task))
        self._background.add(pump)
        pump.add_done_callback(self._background.discard)
        headers = {**SSE_HEADERS, **({"Mcp-Session-Id": session.id} if session.id else {})}
        return StreamingResponse(self._events(stream, 0, priming=True), media_type=_SSE, headers=headers)

    async def _pump(
        self,
        request: Request,
        session: Session,
        stream: EventStream,
        outbox: asyncio.Queue[dict[str, Any] | None],
        task: asyncio.Task[Outcome],
    ) -> None:
        """Move a request's messages onto its stream, the response last; the stream outlives a disconnect."""
        try:
            await stream.append(b"")  # the priming event: an id to resume from, no data
            while not (task.done() and outbox.empty()):
                getter = asyncio.create_task(outbox.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await self._forward(stream, getter.result())
                else:
                    getter.cancel()
            try:
                outcome = task.result()
            except asyncio.CancelledError:
                self._metrics.mcp_cancellations.labels(transport="streamable-http").inc()
                return
            self._count(outcome)
            await stream.append(orjson.dumps(outcome.response))
        finally:
            await stream.close()
            await self._sessions.save(session)
            # Keep the finished stream a while for late resumption, then forget it.
            asyncio.get_running_loop().call_later(60, session.streams.pop, stream.id, None)

    @staticmethod
    async def _forward(stream: EventStream, message: dict[str, Any] | None) -> None:
        if message is None:
            await stream.disconnect()
        else:
            await stream.append(orjson.dumps(message))

    async def _events(self, stream: EventStream, after: int, *, priming: bool) -> AsyncIterator[bytes]:
        retry = self._options.sse_retry_ms

        async def framed() -> AsyncIterator[bytes]:
            async for event in stream.follow(after):
                if not event.data:
                    yield format_event(event.id, b"", event=None, retry_ms=retry if priming else None)
                else:
                    yield format_event(event.id, event.data)

        async for chunk in with_keepalive(framed(), self._options.keepalive_seconds):
            yield chunk
        if self._stopping:
            yield format_retry(retry)

    def _finish(self, request: Request, outcome: Outcome, response: Response) -> Response:
        self._count(outcome)
        request.scope["erlmcp"] = {"mcp_method": outcome.method, "mcp_outcome": outcome.status}
        failure = outcome.response.get("error")
        if failure is not None and failure.get("code") == INVALID_REQUEST:
            response.status_code = 400
        return response

    def _count(self, outcome: Outcome) -> None:
        self._metrics.count_outcome(outcome.method, outcome.status, outcome.tool, outcome.seconds)

    async def _batch(self, request: Request, payload: list[Any]) -> Response:
        """A JSON-RPC batch: only revision 2025-03-26 has them (later revisions removed batching)."""
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        if found.protocol_version != "2025-03-26":
            return _refusal(400, f"Invalid Request: batches are not part of protocol {found.protocol_version}; "
                            "send one message per request")  # fmt: skip
        if not payload:
            return _refusal(400, "Invalid Request: an empty batch")
        answers: list[dict[str, Any]] = []
        requests: list[Message] = []
        for item in payload:
            try:
                message = message_from(item)
            except JsonRpcError as error:
                answers.append(error_response(error.request_id, error))
                continue
            if message.method == "initialize":
                answers.append(
                    error_response(message.id, InvalidRequest("Invalid Request: initialize cannot be batched"))
                )
            elif message.is_response:
                await self._sessions.deliver_response(found, message.id, message.payload)
            elif message.is_notification:
                await self._notification(found, message)
            else:
                requests.append(message)

        async def answer(message: Message) -> dict[str, Any]:
            assert message.id is not None
            ctx = RequestContext(request_id=message.id, method=message.method or "", session=found,
                                 meta=_meta_of(message), protocol_version=found.protocol_version,
                                 scopes=scopes_of(request))  # fmt: skip
            outcome = await self._dispatcher.dispatch(message, ctx)
            self._count(outcome)
            return outcome.response

        answers += await asyncio.gather(*(answer(m) for m in requests))
        if not answers:
            return Response(status_code=202)
        return Response(orjson.dumps(answers), media_type=_JSON)

    # -- 2026-07-28: stateless POST ----------------------------------------------------------------------------

    async def _stateless(
        self, request: Request, message: Message, *, wants_stream: bool, stream_only: bool = False
    ) -> Response:
        if message.is_notification:
            self._metrics.mcp_requests.labels(method="(notification)", outcome="ok").inc()
            return Response(status_code=202)
        if message.is_response:
            return _refusal(400, "Bad Request: a 2026-07-28 client sends no responses; answer with inputResponses")
        assert message.id is not None
        try:
            meta = check_meta(message)
            tool = message.params.get("name") if message.method == "tools/call" else None
            check_headers(message, request.headers, meta, self._dispatcher.tool_schema(tool))
            check_version(meta)
        except JsonRpcError as error:
            self._metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            return _json(error_response(message.id, error), 400)
        if message.method == "subscriptions/listen" and self._dispatcher.announces_changes:
            return self._listen(message)
        outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        ctx = stateless_context(message, meta, send=outbox.put if wants_stream else None, announce=self.announce,
                                scopes=scopes_of(request))  # fmt: skip
        task = asyncio.create_task(self._dispatcher.dispatch_stateless(message, ctx))
        first = asyncio.create_task(outbox.get())
        await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not first.done():
            first.cancel()
            outcome = task.result()
            if stream_only:  # the client takes only event streams: the response as the stream's one event
                event = format_event(None, orjson.dumps(outcome.response))
                return self._finish(request, outcome, StreamingResponse(
                    iter([event]), media_type=_SSE, headers=dict(SSE_HEADERS)))  # fmt: skip
            return self._finish(request, outcome, _json(outcome.response, _stateless_status(outcome.response)))
        return StreamingResponse(
            self._stateless_events(request, first, outbox, task), media_type=_SSE, headers=dict(SSE_HEADERS)
        )

    async def _stateless_events(
        self,
        request: Request,
        first: asyncio.Task[dict[str, Any] | None],
        outbox: asyncio.Queue[dict[str, Any] | None],
        task: asyncio.Task[Outcome],
    ) -> AsyncIterator[bytes]:
        """A stateless response stream: related notifications, then the response. Closing it cancels the request."""
        try:
            message = await first
            if message is not None:
                yield format_event(None, orjson.dumps(message))
            while not (task.done() and outbox.empty()):
                getter = asyncio.create_task(outbox.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    item = getter.result()
                    if item is not None:
                        yield format_event(None, orjson.dumps(item))
                else:
                    getter.cancel()
            outcome = task.result()
            self._count(outcome)
            request.scope["erlmcp"] = {"mcp_method": outcome.method, "mcp_outcome": outcome.status}
            yield format_event(None, orjson.dumps(outcome.response))
        finally:
            if not task.done():
                task.cancel()  # the client closed the stream: in 2026-07-28 that cancels the request

    def _listen(self, message: Message) -> Response:
        """subscriptions/listen: acknowledge what will be delivered, then stream those notifications, tagged."""
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

        listener = self._feed.listen(wants)
        tag = {"io.modelcontextprotocol/subscriptionId": message.id}

        async def events() -> AsyncIterator[bytes]:
            self._streams_open.inc()
            try:
                ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                       "params": {"_meta": tag, "notifications": honoured}}  # fmt: skip
                yield format_event(None, orjson.dumps(ack))
                async for change in listener.changes():
                    params = {**change.params, "_meta": {**change.params.get("_meta", {}), **tag}}
                    yield format_event(
                        None, orjson.dumps({"jsonrpc": "2.0", "method": change.method, "params": params})
                    )
            finally:
                self._streams_open.dec()
                self._feed.forget(listener)

        self._metrics.mcp_requests.labels(method="subscriptions/listen", outcome="ok").inc()
        return StreamingResponse(events(), media_type=_SSE, headers=dict(SSE_HEADERS))

    # -- GET --------------------------------------------------------------------------------------------------

    async def _get(self, request: Request) -> Response:
        if _SSE not in _media_types(request.headers.get("accept", "")):
            return _refusal(406, "Not Acceptable: a GET on /mcp opens an event stream; Accept text/event-stream")
        found = await self._session(request)
        if isinstance(found, Response):
            return found
        session = found
        headers = {**SSE_HEADERS, "Mcp-Session-Id": session.id}
        last = request.headers.get("last-event-id")
        if last:
            parsed = parse_event_id(last)
            stream = await self._sessions.find_stream(session, parsed[0]) if parsed else None
            if stream is None or parsed is None:
                return _refusal(404, f"Not Found: no stream to resume from event {last!r}")
            return StreamingResponse(self._events(stream, parsed[1], priming=False), media_type=_SSE, headers=headers)
        if session.standalone is not None and not session.standalone.closed:
            return _refusal(409, "Conflict: this session already has an open GET stream")
        stream = self._sessions.new_stream(session)
        session.standalone = stream
        await stream.append(b"")
        listener = self._feed.listen(
            lambda change: (
                change.method != "notifications/resources/updated" or change.params.get("uri") in session.subscriptions
            )
        )

        async def forward() -> None:
            async for change in listener.changes():
                message = {"jsonrpc": "2.0", "method": change.method, "params": change.params}
                await stream.append(orjson.dumps(message))

        pump = asyncio.create_task(forward())

        async def events() -> AsyncIterator[bytes]:
            self._streams_open.inc()
            try:
                async for chunk in self._events(stream, 0, priming=True):
                    yield chunk
            finally:
                self._streams_open.dec()
                self._feed.forget(listener)
                pump.cancel()
                await stream.close()

        return StreamingResponse(events(), media_type=_SSE, headers=headers)

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than allowed (checked before and while reading)."""
        limit = self._options.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                return None
            try:
                return await request.body()  # the length is known and allowed: read it in one go
            except ClientDisconnect:
                return b""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
        except ClientDisconnect:
            return b""
        return b"".join(chunks)
