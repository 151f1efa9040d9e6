"""The streamable HTTP transport (MCP 2025-03-26 to 2025-11-25, and 2026-07-28) at one endpoint, ``/mcp``.

- POST carries one JSON-RPC message. A request is answered with ``application/json`` when its handler sends
  nothing before the response, and with an SSE stream (related notifications and requests, then the response)
  when it does. Notifications and responses from the client get 202. Sessions of 2025-11-25 poll (SEP-1699):
  their streams open with a priming event (an id, no data, a ``retry`` hint), and a handler may end a call's
  stream before its response, which the client resumes; older sessions get neither, as from the official SDKs.
- ``initialize`` opens a session: the response carries ``Mcp-Session-Id``, which every later request must
  echo (400 without it, 404 for an unknown or ended one). Sessions are bound to the caller's credentials.
- GET opens the session's stream for server-initiated messages, or resumes a stream from ``Last-Event-ID``.
- DELETE ends the session.
- A POST whose ``MCP-Protocol-Version`` is not a handshake revision is a 2026-07-28 request: its headers must
  agree with its body, and it is answered on its own (no session).

This module frames: every request passes the gate (:mod:`app.security.gate`), and the protocol core
(:mod:`app.protocol.core`) answers its message. Every refusal carries the right HTTP status and a JSON-RPC
error body that says what was wrong, with the id of the message it refuses when that could be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.jsonrpc import (
    INVALID_REQUEST,
    InternalError,
    JsonRpcError,
    Message,
    error_response,
    leading_request_id,
    message_from,
    parse_json,
)
from app.protocol import HANDSHAKE_REVISIONS, polls
from app.protocol.core import ProtocolCore
from app.protocol.dispatcher import Outcome
from app.protocol.stateless import check_meta, check_version
from app.protocol.streams import carry, carry_on_standalone, open_standalone
from app.security.gate import Caller, Refusal
from app.sessions import EventStream, Session
from app.sessions.events import parse_event_id
from app.sessions.store import SessionStoreUnavailable
from app.transports.bodies import TooLarge, json_response, read_body, refuse, refused
from app.transports.headers import check_headers
from app.transports.held import IN_FLIGHT_RELEASE, HeldStream, until_revoked
from app.transports.request import IndexedHeaders
from app.transports.sse import SSE_HEADERS, format_event, replay

__all__ = ["HttpOptions", "McpEndpoint"]

_JSON = "application/json"
_SSE = "text/event-stream"
SESSION_HEADER = "mcp-session-id"


def _stateless_status(response: dict[str, Any]) -> int:
    """The HTTP status of a 2026-07-28 response: 404 for an unknown method, 400 for a bad request, else 200."""
    error = response.get("error")
    if error is None:
        return 200
    code = error.get("code")
    if code == -32601:
        return 404
    if code in {-32700, -32600, -32602, -32020, -32021, -32022}:
        return 400
    return 200


def _stream_only(accept: set[str]) -> bool:
    """Whether the client accepts an event stream and no JSON body."""
    return _SSE in accept and not accept & {_JSON, "application/*", "*/*"}


def _media_types(accept: str) -> set[str]:
    return {part.split(";")[0].strip().lower() for part in accept.split(",") if part.strip()}


@dataclass(frozen=True, slots=True)
class _Accept:
    """What an Accept header allows a POST's answer to be."""

    acceptable: bool  # no Accept, or one that allows JSON or an event stream
    stream: bool  # an event stream
    stream_only: bool  # an event stream and no JSON body

    @classmethod
    def of(cls, header: str) -> _Accept:
        types = _media_types(header)
        return cls(not types or bool(types & {_JSON, _SSE, "application/*", "*/*"}), _SSE in types, _stream_only(types))


# Accept headers seen, with what each allows: clients send the same one on every request, so it is parsed once.
# Bounded in count and length: the header is the client's.
_ACCEPTS: dict[str, _Accept] = {}
_ACCEPTS_KEPT = 64
_ACCEPT_KEPT_CHARS = 256


def _accept(header: str) -> _Accept:
    found = _ACCEPTS.get(header)
    if found is None:
        found = _Accept.of(header)
        if len(_ACCEPTS) < _ACCEPTS_KEPT and len(header) <= _ACCEPT_KEPT_CHARS:
            _ACCEPTS[header] = found
    return found


def _cost(items: list[Any]) -> int:
    """The rate tokens of a batch: one per request in it, and at least one (every POST costs a token)."""
    return max(1, sum(1 for item in items if isinstance(item, dict) and "method" in item and "id" in item))


def _store_away(exc: SessionStoreUnavailable) -> Response:
    """Redis is away: say so at once, and when to try again."""
    away = InternalError(f"Service Unavailable: {exc}; retry later", data={"retryAfter": exc.retry_after})
    return json_response(error_response(None, away), 503, {"Retry-After": str(exc.retry_after)})


class _Answering:
    """Where one POSTed request's handler meets the transport: it runs in its own task (cancellable alone, and
    free to go on sending once the transport answers with an event stream), and the transport waits on one future
    (no extra task on the hot path), woken by the handler's first message or by its end, whichever comes first:
    that decides between a JSON response and an event stream. What the handler sends before its response (None:
    end the HTTP connection) waits in a queue made on the first send, since most requests send nothing else."""

    __slots__ = ("outbox", "woken")

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[dict[str, Any] | None] | None = None
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _wake(self, _: object = None) -> None:
        if not self.woken.done():
            self.woken.set_result(None)

    def run(self, answer: Coroutine[Any, Any, Outcome]) -> asyncio.Task[Outcome]:
        """Start the handler's task; its end wakes the transport."""
        task = self.woken.get_loop().create_task(answer)  # (asyncio.create_task's own two frames, not needed here)
        task.add_done_callback(self._wake)
        return task

    async def send(self, item: dict[str, Any] | None) -> None:
        """What the handler sends before its response."""
        self.queue().put_nowait(item)
        self._wake()

    async def end_connection(self) -> None:
        """End the HTTP connection before the response (a polling client resumes the stream)."""
        await self.send(None)

    def queue(self) -> asyncio.Queue[dict[str, Any] | None]:
        """The handler's messages (made now if it sent none)."""
        if self.outbox is None:
            self.outbox = asyncio.Queue()
        return self.outbox


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Timings and the session mode of the HTTP transport."""

    sse_retry_ms: int = 1000
    keepalive_seconds: float = 15.0
    stateless: bool = False  # no sessions: every request stands alone (Cloud Run-style autoscaling)


class McpEndpoint:
    """Handles every request to ``/mcp``."""

    def __init__(self, core: ProtocolCore, options: HttpOptions) -> None:
        self.core = core
        self._gate = core.gate
        self._metrics = core.metrics
        self._sessions = core.sessions
        self._streams_open = core.metrics.connections_active.labels(transport="streamable-http")  # GET and listen
        self._options = options
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()

    def shutdown(self) -> None:
        """End the long-lived streams (GET streams, listen streams) so that the server can stop; every stream that
        ends from now on ends with a ``retry`` hint."""
        self._stopping = True
        self.core.shutdown()

    async def handle(self, request: Request) -> Response:
        """Answer one HTTP request to the MCP endpoint."""
        scope = request.scope  # (the method and the peer read from it once, as Starlette's properties read them)
        method: str = scope["method"]
        client = scope.get("client")
        indexed = request.headers  # (an McpRequest's: then read from one dict, by lowercase name, as all are read)
        headers: Mapping[str, str] = indexed.first if isinstance(indexed, IndexedHeaders) else indexed
        admitted = await self._gate.admit(headers, client[0] if client is not None else None)
        if isinstance(admitted, Refusal):
            return refused(admitted)
        caller = admitted
        version = headers.get("mcp-protocol-version", "").strip()
        if method == "POST":
            try:
                return await self._post(request, caller, version, headers)
            except SessionStoreUnavailable as exc:
                return _store_away(exc)
        if method in {"GET", "DELETE"}:
            if self._options.stateless:
                why = "this server keeps no sessions, so"
                return refuse(405, f"Method Not Allowed: {why} {method} has no use", {"Allow": "POST"})
            if version and version not in HANDSHAKE_REVISIONS:
                why = f"{method} has no use in protocol {version}"
                return refuse(405, f"Method Not Allowed: {why}", {"Allow": "POST"})
        try:
            if method in {"GET", "DELETE"}:
                limited = await self._gate.take(caller)
                if limited is not None:
                    return refused(limited)
                return await (self._get(request, caller) if method == "GET" else self._delete(request, caller))
        except SessionStoreUnavailable as exc:
            return _store_away(exc)
        return refuse(405, f"Method Not Allowed: {method} /mcp", headers={"Allow": "GET, POST, DELETE"})

    # -- sessions ---------------------------------------------------------------------------------------------

    async def _session(self, headers: Mapping[str, str], caller: Caller) -> Session | Response:
        session_id = headers.get(SESSION_HEADER)
        if not session_id:
            return refuse(400, "Bad Request: Missing Mcp-Session-Id header; send initialize first")
        session = await self.core.session_of(session_id, caller)
        if session is None:
            return refuse(404, "Session not found: it ended or never existed; send initialize again")
        return session

    async def _delete(self, request: Request, caller: Caller) -> Response:
        found = await self._session(request.headers, caller)
        if isinstance(found, Response):
            return found
        await self._sessions.delete(found.id)
        return Response(status_code=200)

    def _ephemeral_session(self, caller: Caller, version: str) -> Session:
        """Stateless mode: a session of one request, never stored (no server requests, no resumption)."""
        return Session(
            id="",
            protocol_version=version or HANDSHAKE_REVISIONS[-1],
            client_info={},
            client_capabilities={},
            principal=caller.principal,
            last_seen=0.0,
        )

    # -- POST -------------------------------------------------------------------------------------------------

    async def _post(self, request: Request, caller: Caller, version: str, headers: Mapping[str, str]) -> Response:
        content_type = headers.get("content-type", "")
        if content_type != _JSON:  # (as the bare media type it is already)
            content_type = content_type.split(";")[0].strip().lower()
        accept = _accept(headers.get("accept", ""))
        if content_type != _JSON:
            why = f"Unsupported Media Type: Content-Type must be application/json, not {content_type!r}"
            return await self._charged(caller, refuse(415, why))
        if not accept.acceptable:
            why = "Not Acceptable: the Accept header must allow application/json or text/event-stream"
            return await self._charged(caller, refuse(406, why))
        body = await read_body(request, self._gate.max_message_bytes)
        if isinstance(body, TooLarge):
            return await self._charged(caller, refused(self._gate.oversized(), leading_request_id(body.head)))
        try:
            payload = parse_json(body)
            if isinstance(payload, list):
                return await self._batch(request, caller, payload)
            message = message_from(payload)
        except JsonRpcError as error:
            self._metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            return await self._charged(caller, json_response(error_response(error.request_id, error), 400))
        denied = await self._gate.screen(caller, message)
        unanswered = message.is_response or message.is_notification  # (nothing to answer)
        if denied is None and unanswered:  # every POST costs a token
            denied = await self._gate.take(caller)
        if denied is not None:
            return refused(denied, message.id)
        if version and version not in HANDSHAKE_REVISIONS:
            # Not a handshake revision: a 2026-07-28 (stateless) request, or one to refuse as such.
            return await self._stateless(
                request, caller, message, headers, wants_stream=accept.stream, stream_only=accept.stream_only
            )
        if message.method == "initialize" and not message.is_notification:
            answer = await self.core.initialize(message, caller, keep_session=not self._options.stateless)
            request.scope["erlmcp"] = {
                "mcp_method": "initialize",
                "mcp_outcome": "error" if "error" in answer.response else "ok",
            }
            return json_response(answer.response, answer.status, dict(answer.headers))
        found = (
            self._ephemeral_session(caller, version)
            if self._options.stateless
            else await self._session(headers, caller)
        )
        if isinstance(found, Response):
            return found
        if unanswered:
            if not await self.core.deliver(found, message):
                return refuse(400, f"Bad Request: no request with id {message.id!r} is waiting for a response")
            return Response(status_code=202)
        return await self._request(request, caller, found, message, accept.stream, stream_only=accept.stream_only)

    async def _request(
        self,
        request: Request,
        caller: Caller,
        session: Session,
        message: Message,
        wants_stream: bool,
        *,
        stream_only: bool = False,
    ) -> Response:
        assert message.id is not None
        answering = _Answering()
        # Only a session that polls (2025-11-25) gets a priming event, and may have its call's stream ended before
        # the response (the client resumes it); an older client would wait for a response that never comes. A
        # session of one request (stateless mode) cannot be resumed at all.
        polling = bool(session.id) and polls(session.protocol_version)
        ctx = self.core.context(
            message,
            caller,
            session,
            send=answering.send if wants_stream else None,
            end_connection=answering.end_connection if wants_stream and polling else None,
        )
        task = answering.run(self.core.run(message, ctx))
        await answering.woken
        if task.done() and answering.outbox is None and not stream_only:
            try:
                outcome = task.result()
            except asyncio.CancelledError:
                self._metrics.mcp_cancellations.labels(transport="streamable-http").inc()
                return Response(status_code=204)  # cancelled by the client: no response is owed
            if session.id:
                await self._sessions.save(session)
            return self._finish(request, outcome, json_response(outcome.response))
        outbox = answering.queue()  # (made now if the handler finished without sending: a stream-only client)
        stream = self._sessions.new_stream(session) if session.id else EventStream()
        pump = asyncio.create_task(
            carry(self.core, session, stream, outbox, task, transport="streamable-http", priming=polling)
        )
        self._background.add(pump)
        pump.add_done_callback(self._background.discard)
        headers = {**SSE_HEADERS, **({"Mcp-Session-Id": session.id} if session.id else {})}
        return StreamingResponse(self._events(stream, 0, polling=polling), media_type=_SSE, headers=headers)

    def _events(
        self, stream: EventStream, after: int, *, polling: bool, generation: int | None = None
    ) -> AsyncIterator[bytes]:
        options = self._options
        return replay(
            stream,
            after,
            polling=polling,
            retry_ms=options.sse_retry_ms,
            keepalive_seconds=options.keepalive_seconds,
            stopping=lambda: self._stopping,
            generation=generation,
        )

    async def _charged(self, caller: Caller, refusal: Response) -> Response:
        """A refusal of a POST whose message could not be screened: it takes its rate token all the same."""
        limited = await self._gate.take(caller)
        return refused(limited) if limited is not None else refusal

    def _finish(self, request: Request, outcome: Outcome, response: Response) -> Response:
        request.scope["erlmcp"] = {"mcp_method": outcome.method, "mcp_outcome": outcome.status}
        failure = outcome.response.get("error")
        if failure is not None and failure.get("code") == INVALID_REQUEST:
            response.status_code = 400
        return response

    async def _batch(self, request: Request, caller: Caller, items: list[Any]) -> Response:
        """A JSON-RPC batch: only revision 2025-03-26 has them (later revisions removed batching). One over the
        core's item limit is refused whole (its POST takes one token); otherwise each message in it takes a rate
        token, as it would alone, and the core bounds how it runs (:class:`~app.protocol.core.BatchLimits`)."""
        too_many = self.core.batch_refusal(items)
        if too_many is not None:
            return await self._charged(caller, refused(too_many))
        limited = await self._gate.take(caller, _cost(items))
        if limited is not None:
            return refused(limited)
        found = await self._session(request.headers, caller)
        if isinstance(found, Response):
            return found
        if found.protocol_version != "2025-03-26":
            why = f"batches are not part of protocol {found.protocol_version}; send one message per request"
            return refuse(400, f"Invalid Request: {why}")
        if not items:
            return refuse(400, "Invalid Request: an empty batch")
        answers = await self.core.batch(items, found, caller)
        await self._sessions.save(found)
        if not answers:
            return Response(status_code=202)
        return Response(orjson.dumps(answers), media_type=_JSON)

    async def _stateless(
        self,
        request: Request,
        caller: Caller,
        message: Message,
        headers: Mapping[str, str],
        *,
        wants_stream: bool,
        stream_only: bool = False,
    ) -> Response:
        """Answer a 2026-07-28 request; ``headers`` are the request's, as ``handle`` read them (by lowercase name)."""
        if message.is_response:
            return refuse(400, "Bad Request: a 2026-07-28 client sends no responses; answer with inputResponses")
        if message.id is None:  # a notification (a request without an id)
            self._metrics.mcp_requests.labels(method="(notification)", outcome="ok").inc()
            return Response(status_code=202)
        try:
            meta = check_meta(message)
            tool = message.params.get("name") if message.method == "tools/call" else None
            check_headers(message, headers, meta, self.core.dispatcher.mirrored(tool))
            check_version(meta)
        except JsonRpcError as error:
            self._metrics.mcp_requests.labels(method="(invalid)", outcome="error").inc()
            return json_response(error_response(message.id, error), 400)
        if message.method == "subscriptions/listen" and self.core.listens:
            return self._listen(request, caller, message)
        answering = _Answering()
        ctx = self.core.stateless_context(message, meta, caller, send=answering.send if wants_stream else None)
        task = answering.run(self.core.run(message, ctx))
        await answering.woken
        if task.done() and answering.outbox is None:
            outcome = task.result()
            if stream_only:  # the client takes only event streams: the response as the stream's one event
                event = format_event(None, orjson.dumps(outcome.response))
                single = StreamingResponse(iter([event]), media_type=_SSE, headers=dict(SSE_HEADERS))
                return self._finish(request, outcome, single)
            return self._finish(request, outcome, json_response(outcome.response, _stateless_status(outcome.response)))
        return StreamingResponse(
            self._stateless_events(request, answering.queue(), task), media_type=_SSE, headers=dict(SSE_HEADERS)
        )

    async def _stateless_events(
        self,
        request: Request,
        outbox: asyncio.Queue[dict[str, Any] | None],
        task: asyncio.Task[Outcome],
    ) -> AsyncIterator[bytes]:
        """A stateless response stream: related notifications, then the response. Closing it cancels the request."""
        try:
            while not (task.done() and outbox.empty()):
                if outbox.empty():
                    getter = asyncio.create_task(outbox.get())
                    await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        continue
                    item = getter.result()
                else:
                    item = outbox.get_nowait()
                if item is not None:
                    yield format_event(None, orjson.dumps(item))
            outcome = task.result()
            request.scope["erlmcp"] = {"mcp_method": outcome.method, "mcp_outcome": outcome.status}
            yield format_event(None, orjson.dumps(outcome.response))
        finally:
            if not task.done():
                task.cancel()  # the client closed the stream: in 2026-07-28 that cancels the request

    def _listen(self, request: Request, caller: Caller, message: Message) -> Response:
        """subscriptions/listen: the acknowledgement, then the notifications asked for, on an event stream. Like a
        GET stream it holds one of the caller's connection slots (429 over the cap) instead of a place among the
        POSTs in progress, and ends with a JSON-RPC error once the caller's credential is gone."""
        slot = self._gate.hold(caller, "streamable-http")
        if isinstance(slot, Refusal):
            return refused(slot, message.id)
        handed_back = request.scope.get(IN_FLIGHT_RELEASE)
        if callable(handed_back):
            handed_back()  # a stream for as long as the client wants: not a request in progress

        async def notifications() -> AsyncIterator[bytes]:
            subscription = self.core.listen(message)  # listening only once the stream is sent
            try:
                yield format_event(None, orjson.dumps(subscription.ack))
                async for notification in subscription.notifications():
                    yield format_event(None, orjson.dumps(notification))
            finally:
                self.core.forget(subscription.listener)

        async def events() -> AsyncIterator[bytes]:
            self._streams_open.inc()
            try:
                async for chunk in until_revoked(notifications(), self._gate, caller, "streamable-http"):
                    yield chunk
            finally:
                self._streams_open.dec()

        return HeldStream(events(), slot, media_type=_SSE, headers=SSE_HEADERS)

    # -- GET --------------------------------------------------------------------------------------------------

    async def _get(self, request: Request, caller: Caller) -> Response:
        """The session's standalone stream, or a stream resumed from ``Last-Event-ID``. Either holds one of the
        caller's connection slots while it is open (429 over the cap), and ends with a JSON-RPC error once the
        caller's credential is gone (checked at each event and keep-alive).

        The standalone stream belongs to the session, not to the connection (see :mod:`app.protocol.streams`): a
        resume gets what was sent while the client was away, then what comes next, and takes over from a connection
        still reading it (which ends: the server may not have seen the client lose it; of two resumes at once, the
        later reads on). A resume of a stream that stopped (the client was away longer than it is kept) gets what it
        kept, then what comes next on a new stream of the session, as a GET without ``Last-Event-ID`` would. That GET
        is 409 while a connection reads the session's stream; otherwise it starts a new one (the client did not
        resume the last one). Only a session that polls (2025-11-25) gets a priming event."""
        if _SSE not in _media_types(request.headers.get("accept", "")):
            return refuse(406, "Not Acceptable: a GET on /mcp opens an event stream; Accept text/event-stream")
        found = await self._session(request.headers, caller)
        if isinstance(found, Response):
            return found
        session = found
        headers = {**SSE_HEADERS, "Mcp-Session-Id": session.id}
        last = request.headers.get("last-event-id")
        resumed: tuple[EventStream, int] | None = None  # the stream to resume, and the event it resumes after
        if last:
            parsed = parse_event_id(last)
            known = await self._sessions.find_stream(session, parsed[0]) if parsed else None
            if known is None or parsed is None:
                return refuse(404, f"Not Found: no stream to resume from event {last!r}")
            resumed = (known, parsed[1])
        elif session.standalone is not None and session.standalone.stream.readers:
            return refuse(409, "Conflict: this session already has an open GET stream")
        slot = self._gate.hold(caller, "streamable-http")
        if isinstance(slot, Refusal):
            return refused(slot)
        polling = polls(session.protocol_version)
        try:
            if resumed is None:
                stream, after = (await open_standalone(self.core, session, priming=polling)).stream, 0
                reads: EventStream | None = stream
            else:
                stream, after = resumed
                # the session's GET stream this connection reads: the one resumed (run here if its replica is gone),
                # or a new one when that one stopped; none for a call's stream
                reads = await carry_on_standalone(self.core, session, stream) if stream.standalone else None
            # Taken over now, not when the response starts: the stream counts as read from now (it does not stop
            # meanwhile), and of two resumes at once the later reads it, whichever starts first.
            generation = await reads.take_over() if reads is not None else 0
        except BaseException:
            slot.release()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            if reads is not stream:  # a call's stream, or one that stopped: what it kept after the client's last event
                async for chunk in self._events(stream, after, polling=polling):
                    yield chunk
            if reads is not None:  # then the session's GET stream, from where the client is; ends once taken over
                start = after if reads is stream else 0
                async for chunk in self._events(reads, start, polling=polling, generation=generation):
                    yield chunk

        async def events() -> AsyncIterator[bytes]:
            self._streams_open.inc()
            attached = False
            try:
                if reads is not None:  # (once the response is sent: a connection gone before never counted)
                    attached = True
                    await reads.attach(generation)
                async for chunk in until_revoked(chunks(), self._gate, caller, "streamable-http"):
                    yield chunk
            finally:
                self._streams_open.dec()
                if attached and reads is not None:
                    reads.detach()  # the stream goes on: the client may come back for what it missed

        return HeldStream(events(), slot, media_type=_SSE, headers=headers)
