"""The HTTP front door, as pure ASGI middleware: what every request to the MCP listener goes through.

:class:`FrontDoor` is the application the listener serves. A request passes, in this order: the drain wrapper
(``Connection: close`` on every answer while the server drains), :class:`ObserveRequests` (one access-log line
and the HTTP metrics, under the caller's trace), CORS (when origins are configured), then :class:`McpRoute`:
``/mcp`` straight to the MCP endpoint, past the router, under the bound of requests in progress (503 past it);
every other path (health, /ws, /sse, /messages, metadata, 404s) to the Starlette application.

Also here: the health answers (:data:`HEALTH_PATHS`, :func:`health`, :func:`readiness`), :class:`ServerState`
(what they report), and :func:`cors_options`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import structlog
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import access, tracing
from app.observability import logging as logs
from app.observability.metrics import Metrics
from app.transports.held import IN_FLIGHT_RELEASE
from app.transports.request import McpRequest

__all__ = [
    "HEALTH_PATHS",
    "MCP_PATH",
    "FrontDoor",
    "McpEndpointLike",
    "McpRoute",
    "ObserveRequests",
    "ServerState",
    "cors_options",
    "health",
    "readiness",
]

log = structlog.get_logger(__name__)

MCP_PATH = "/mcp"
HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/health"})
# Metric labels take only these methods, so clients cannot create series at will.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_INTERNAL_ERROR = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}'


@dataclass(slots=True)
class ServerState:
    """What the health endpoints report: draining starts when the server is asked to stop; ``dependency`` says
    why the server cannot serve now (None when it can), for readiness."""

    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)
    dependency: Callable[[], Awaitable[str | None]] | None = None


def health(*, draining: bool, unavailable: str | None = None) -> Response:
    """A health answer: 200 ``ok``; 503 ``draining`` once the server was asked to stop, or ``unavailable`` (with
    the reason) while a dependency, such as the Redis session store, does not answer."""
    if draining:
        return Response(b'{"status":"draining"}', status_code=503, media_type="application/json")
    if unavailable is not None:
        body = orjson.dumps({"status": "unavailable", "reason": unavailable})
        return Response(body, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readiness(state: ServerState) -> Response:
    """Readiness: not while draining, nor while the session store cannot serve (its own background check says
    so; a probe does not reach Redis). Liveness never asks: a Redis outage must not restart the process."""
    if state.draining:
        return health(draining=True)
    return health(draining=False, unavailable=await state.dependency() if state.dependency else None)


class ObserveRequests:
    """Pure ASGI middleware: one access-log line (:mod:`app.observability.access`) and the HTTP metrics for every
    request.

    The request runs under the trace context its headers carry (``traceparent``, ``tracestate``), so that its
    log lines and the spans of the messages it brings belong to the caller's trace. A valid ``X-Request-ID`` is
    the ``requestId`` of its log lines and comes back on the response; without one, the trace id does. WebSocket
    connections are only noted, for the spans of their messages (their trace context comes in ``_meta``).
    Health probes are counted but not logged.

    ``server``: the drain wrapper's state, for the front door, whose first step this is (``Connection: close``
    on every HTTP answer while the server drains, outside the observation); None: no drain wrapper.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, *, server: ServerState | None = None) -> None:
        self._app = app
        self._metrics = metrics
        self._in_flight = metrics.http_requests_in_flight
        self._server = server
        # The process's access line (None: off, by ERLMCP_ACCESS_LOG or a level above INFO).
        self._access_log = access.access_log() if logging.getLogger(__name__).isEnabledFor(logging.INFO) else None
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}  # labelled metric children, made once
        self._trace_headers = tracing.propagated_headers()
        # (one look per header for what the request's observation reads: its trace context, X-Request-ID, and the
        # User-Agent its access line names)
        self._read_headers = self._trace_headers | {b"x-request-id", b"user-agent"}

    def _count(self, method: str, status: int, elapsed: float) -> None:
        children = self._children.get((method, status))
        if children is None:
            requests = self._metrics.http_requests.labels(method=method, code=str(status))
            children = (requests, self._metrics.http_request_duration.labels(method=method))
            self._children[(method, status)] = children
        children[0].inc()
        children[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] != "websocket":
                await self._app(scope, receive, send)
                return
            with tracing.Exchange("websocket", None, scope.get("client")):
                await self._app(scope, receive, send)
            return
        if self._server is not None and self._server.draining:
            send = _closing(send)
        started = time.perf_counter()
        status = 500
        sent = 0
        carried = False
        request_id = None
        user_agent = b""  # the last one, as a dict of the headers keeps it
        read_headers = self._read_headers
        for name, value in scope["headers"]:
            if name in read_headers:
                if name in self._trace_headers:
                    carried = True
                elif name == b"user-agent":
                    user_agent = value
                else:
                    request_id = logs.request_id(value)
        carrier = scope["headers"] if carried else None
        exchange = tracing.Exchange("http", scope.get("http_version"), scope.get("client"), carrier)

        async def observe(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                echoed = request_id or exchange.trace_id
                if echoed is not None:
                    message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", echoed.encode())]}
            elif kind == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        method = scope["method"] if scope["method"] in _HTTP_METHODS else "OTHER"
        bound = structlog.contextvars.bind_contextvars(requestId=request_id) if request_id is not None else None
        self._in_flight.inc()
        with exchange:
            try:
                await self._app(scope, receive, observe)
            finally:
                elapsed = time.perf_counter() - started
                self._in_flight.dec()
                self._count(method, status, elapsed)
                if self._access_log is not None and scope["path"] not in HEALTH_PATHS:
                    self._access_log.write(scope, method, status, sent, elapsed, request_id, user_agent, exchange)
                if bound is not None:
                    structlog.contextvars.reset_contextvars(**bound)


class McpEndpointLike(Protocol):
    """What :class:`McpRoute` needs of the MCP endpoint."""

    async def handle(self, request: Request) -> Response: ...


class McpRoute:
    """Pure ASGI middleware: ``/mcp`` (every method) goes straight to the MCP endpoint, past the router and
    Starlette's routing (the hot path), with at most ``max_in_flight`` POSTs answered at once (0: no
    bound); every other path goes on to ``app``."""

    def __init__(self, app: ASGIApp, endpoint: McpEndpointLike, *, max_in_flight: int, metrics: Metrics) -> None:
        self._app = app
        self._endpoint = endpoint
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._shed = metrics.requests_shed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != MCP_PATH:
            await self._app(scope, receive, send)
            return
        release = None
        if self._max_in_flight and scope["method"] == "POST":
            if self._in_flight >= self._max_in_flight:
                await self._overloaded(scope, receive, send)
                return
            release = scope[IN_FLIGHT_RELEASE] = self._hold()
        try:  # the answer in this coroutine, not one of its own: one frame less on every await it passes
            try:
                response = await self._endpoint.handle(McpRequest(scope, receive))
            except Exception:  # never a stack trace on the wire; the log has it
                log.exception("the MCP endpoint failed")
                response = Response(_INTERNAL_ERROR, status_code=500, media_type="application/json")
            await response(scope, receive, send)
        finally:
            if release is not None:
                release()

    def _hold(self) -> Callable[[], None]:
        """Count one more request in progress; returns what counts it out, once: when the answer is done, or
        when it becomes a long-lived stream."""
        self._in_flight += 1
        counted = True

        def release() -> None:
            nonlocal counted
            if counted:
                counted = False
                self._in_flight -= 1

        return release

    async def _overloaded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Shed a request at once, so that it is retried elsewhere rather than queued until it times out."""
        self._shed.inc()
        message = f"Server overloaded: {self._in_flight} requests in progress; retry after 1 s"
        body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}})
        response = Response(body, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
        await response(scope, receive, send)


# What a browser MCP client sends and must be able to read (2025-11-25 and 2026-07-28 headers).
_CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Last-Event-ID",
    "Mcp-Method",
    "Mcp-Name",
    "X-API-Key",
    "traceparent",
    "tracestate",
    "X-Request-ID",
)
_CORS_RESPONSE_HEADERS = ("Mcp-Session-Id", "WWW-Authenticate", "Retry-After", "X-Request-ID")


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """CORS for browser clients from ``origins``: preflights answered, the session header readable."""
    return {
        "allow_origins": list(origins),
        "allow_methods": ["GET", "POST", "DELETE"],
        "max_age": 600,
        "allow_headers": list(_CORS_REQUEST_HEADERS),
        "expose_headers": list(_CORS_RESPONSE_HEADERS),
    }


class FrontDoor(ObserveRequests):
    """The application the MCP listener serves, and the one tests build: every request, ``/mcp`` or not, goes
    through one drain wrapper, one :class:`ObserveRequests`, one CORS (when ``cors_origins``), then
    :class:`McpRoute`, which sends ``/mcp`` to ``endpoint`` and every other path (and the lifespan) to ``app``.
    The front door is the observation itself, with the drain wrapper as its first step: one coroutine less
    per request than a wrapper of its own.

    ``state`` is ``app``'s state (``mcp_endpoint``, ``legacy_sse``, ``erlmcp``, ...), so that whoever holds the
    front door reaches what the application built; ``server`` says when the server drains.
    """

    def __init__(
        self,
        app: Starlette,
        endpoint: McpEndpointLike,
        *,
        server: ServerState,
        metrics: Metrics,
        max_in_flight: int = 0,
        cors_origins: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.state: State = app.state
        routed: ASGIApp = McpRoute(app, endpoint, max_in_flight=max_in_flight, metrics=metrics)
        if cors_origins:
            routed = CORSMiddleware(routed, **cors_options(cors_origins))
        super().__init__(routed, metrics, server=server)


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the response: while the server drains, a keep-alive client opens its
    next request on a new connection (to another replica, /readyz being 503), instead of reusing one that the
    server is about to close, where a request sent as it closes would be reset unanswered."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing
