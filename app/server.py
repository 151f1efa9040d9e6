"""Build the HTTP applications from the settings and run their two listeners (MCP and metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import signal
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
import structlog
import uvicorn
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.catalog.features import PROFILES, CatalogRuntime, load_features
from app.catalog.reload import CatalogWatcher
from app.features import Features
from app.observability import logging as logs
from app.observability import tracing
from app.observability.metrics import Metrics
from app.protocol.dispatcher import Dispatcher
from app.protocol.request_state import RequestStateSealer
from app.security import ApiKeyAuthenticator, Authenticator, JwtVerifier
from app.security.clients import parse_networks
from app.security.keys import ApiKey
from app.security.origin import OriginPolicy
from app.security.ratelimit import RateLimiter, RedisTokenBuckets, TokenBuckets
from app.sessions import SessionStore
from app.sessions.redis import RedisSessionStore
from app.sessions.store import SessionBackend
from app.settings import Settings, SettingsError, load_api_keys
from app.transports.guard import guarded_protocol
from app.transports.legacy_sse import LegacySse
from app.transports.stdio import serve_stdio
from app.transports.streamable_http import McpEndpoint, TransportOptions
from app.transports.tcp import serve_tcp
from app.transports.tls import ServingTls
from app.transports.websocket import websocket_handler

if TYPE_CHECKING:
    from app.observability.cloud_monitoring import CloudMonitoringExporter

__all__ = ["ListenerError", "ServerState", "create_app", "create_metrics_app", "serve"]

log = structlog.get_logger(__name__)

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/health"})
# Metric labels take only these methods, so clients cannot create series at will.
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _health(*, draining: bool, unavailable: str | None = None) -> Response:
    """A health answer: 200 ``ok``; 503 ``draining`` once the server was asked to stop, or ``unavailable`` (with
    the reason) while a dependency, such as the Redis session store, does not answer."""
    if draining:
        return Response(b'{"status":"draining"}', status_code=503, media_type="application/json")
    if unavailable is not None:
        body = orjson.dumps({"status": "unavailable", "reason": unavailable})
        return Response(body, status_code=503, media_type="application/json", headers={"Retry-After": "1"})
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _readiness(state: ServerState) -> Response:
    """Readiness: not while draining, nor while the session store cannot serve (its own background check says
    so; a probe does not reach Redis). Liveness never asks: a Redis outage must not restart the process."""
    if state.draining:
        return _health(draining=True)
    return _health(draining=False, unavailable=await state.dependency() if state.dependency else None)


async def _expire_idle_sessions(sessions: SessionBackend, idle_seconds: float) -> None:
    """Release sessions whose client vanished without DELETE, whether or not other traffic comes (the stores also
    sweep when they are full); every quarter of the idle time, between 0.5 and 5 seconds."""
    interval = min(5.0, max(0.5, idle_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        sessions.expire()


class ListenerError(RuntimeError):
    """A listener could not start (the port is taken or the address cannot be bound)."""


@dataclass(slots=True)
class ServerState:
    """What the health endpoints report: draining starts when the server is asked to stop; ``dependency`` says
    why the server cannot serve now (None when it can), for readiness."""

    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)
    dependency: Callable[[], Awaitable[str | None]] | None = None


class _ObserveRequests:
    """Pure ASGI middleware: one access-log line and the HTTP metrics for every request.

    The request runs under the trace context its headers carry (``traceparent``, ``tracestate``), so that its
    log lines and the spans of the messages it brings belong to the caller's trace. A valid ``X-Request-ID`` is
    the ``requestId`` of its log lines and comes back on the response; without one, the trace id does. WebSocket
    connections are only noted, for the spans of their messages (their trace context comes in ``_meta``).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics
        self._access_log = logging.getLogger(__name__).isEnabledFor(logging.INFO)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}  # labelled metric children, made once
        self._trace_headers = tracing.propagated_headers()

    def _count(self, method: str, status: int, elapsed: float) -> None:
        children = self._children.get((method, status))
        if children is None:
            children = (self._metrics.http_requests.labels(method=method, code=str(status)),
                        self._metrics.http_request_duration.labels(method=method))  # fmt: skip
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
        started = time.perf_counter()
        status = 500
        sent = 0
        carried = False
        request_id = None
        for name, value in scope["headers"]:
            if name in self._trace_headers:
                carried = True
            elif name == b"x-request-id":
                request_id = logs.request_id(value)
        exchange = tracing.Exchange("http", scope.get("http_version"), scope.get("client"),
                                    scope["headers"] if carried else None)  # fmt: skip

        async def observe(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                echoed = request_id or exchange.trace_id
                if echoed is not None:
                    message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", echoed.encode())]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        method = scope["method"] if scope["method"] in _HTTP_METHODS else "OTHER"
        bound = structlog.contextvars.bind_contextvars(requestId=request_id) if request_id is not None else None
        self._metrics.http_requests_in_flight.inc()
        with exchange:
            try:
                await self._app(scope, receive, observe)
            finally:
                elapsed = time.perf_counter() - started
                self._metrics.http_requests_in_flight.dec()
                self._count(method, status, elapsed)
                if scope["path"] not in HEALTH_PATHS and self._access_log:
                    headers = dict(scope.get("headers") or [])
                    client = scope.get("client")
                    with exchange.reporting():  # the line names the span the request was answered in
                        log.info(
                            "request",
                            httpRequest={
                                "requestMethod": method,
                                "requestUrl": scope["path"],
                                "status": status,
                                "responseSize": str(sent),
                                "latency": f"{elapsed:.6f}s",
                                "remoteIp": client[0] if client else None,
                                "userAgent": headers.get(b"user-agent", b"").decode("latin-1") or None,
                                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                            },
                            **scope.get("erlmcp", {}),
                        )
                if bound is not None:
                    structlog.contextvars.reset_contextvars(**bound)


METADATA_PATH = "/.well-known/oauth-protected-resource"


def _resource(settings: Settings) -> str:
    return (settings.resource_url or settings.jwt_audience or "").rstrip("/")


def protected_resource_metadata(settings: Settings) -> dict[str, Any]:
    """RFC 9728 protected-resource metadata: which authorization servers issue tokens for this server."""
    return {
        "resource": _resource(settings),
        "authorization_servers": settings.authorization_servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "erlmcp",
    }


def authenticator(settings: Settings, api_keys: Sequence[ApiKey]) -> Authenticator:
    """API keys and, when configured, JWT bearer tokens.

    Raises:
        SettingsError: the JWT settings cannot be used (an unsafe algorithm, an unreadable key file, ...).
    """
    tokens = None
    if settings.jwt_enabled:
        assert settings.jwt_issuer is not None
        try:
            tokens = JwtVerifier(
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience or _resource(settings),
                algorithms=settings.jwt_algorithms,
                leeway_seconds=settings.jwt_leeway_seconds,
                public_key_file=settings.jwt_public_key_file,
                jwks_url=settings.jwt_jwks_url,
                min_refresh_seconds=settings.jwks_min_refresh_seconds,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
    metadata_url = f"{_resource(settings)}{METADATA_PATH}" if tokens is not None and _resource(settings) else None
    keys = ApiKeyAuthenticator(api_keys, source=settings.api_key_file if api_keys else None)
    return Authenticator(keys, tokens, metadata_url=metadata_url)


def serving_tls(settings: Settings) -> ServingTls | None:
    """The TLS context of the MCP listener, or None for plain HTTP; reloaded when its files change."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    try:
        return ServingTls(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"the TLS certificate or key cannot be used: {exc}") from exc


def cloud_monitoring_exporter(settings: Settings, metrics: Metrics) -> CloudMonitoringExporter | None:
    """The Cloud Monitoring exporter of the seed's five custom metrics, when a project is configured."""
    if not settings.cloud_monitoring_project:
        return None
    from app.observability.cloud_monitoring import CloudMonitoringExporter  # the Google client loads only if used

    labels = {"location": settings.cloud_monitoring_location, "namespace": settings.cloud_monitoring_namespace,
              "job": "erlmcp", "task_id": settings.cloud_monitoring_task_id or socket.gethostname()}  # fmt: skip
    try:
        from google.cloud import monitoring_v3

        if settings.cloud_monitoring_endpoint:  # a local server of the API's protocol: plaintext, no credentials
            import grpc  # type: ignore[import-untyped]
            from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

            channel = grpc.insecure_channel(settings.cloud_monitoring_endpoint)
            client = monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
        else:
            client = monitoring_v3.MetricServiceClient()  # finds the credentials now: a missing one stops the start
        return CloudMonitoringExporter(metrics.registry, project_id=settings.cloud_monitoring_project,
                                       resource_labels=labels, client=client,
                                       interval_seconds=settings.cloud_monitoring_interval_seconds)  # fmt: skip
    except Exception as exc:  # no credentials, a bad label: say so at start rather than fail later
        raise SettingsError(f"Cloud Monitoring export cannot start: {exc}") from exc


def rate_limiter(settings: Settings, sessions: SessionBackend) -> RateLimiter | None:
    """Token buckets per client: in Redis when sessions are (so the budget holds across replicas), else here."""
    if settings.rate_limit_per_second <= 0:
        return None
    if isinstance(sessions, RedisSessionStore):
        return RedisTokenBuckets(sessions.redis, settings.rate_limit_per_second, settings.rate_limit_burst)
    return TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)


def _redis_tls(url: str, settings: Settings) -> dict[str, Any]:
    """The client's TLS arguments for a ``rediss://`` URL (none for others, whose connections take no ``ssl_*``):
    the server's certificate must chain to ``redis_ca_file`` (else the system trust store) and name the URL's
    host. The pool makes every connection with them: commands, the session bus (pub/sub) and the rate limits.

    Raises:
        SettingsError: the CA file does not exist, cannot be read, or holds no PEM certificate.
    """
    if urlsplit(url).scheme != "rediss":
        return {}
    ca_file = settings.redis_ca_file
    if ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(ca_file))  # what each connection will do: fail now, not later
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SettingsError(f"redis_ca_file (ERLMCP_REDIS_CA_FILE) {ca_file} cannot be used as a PEM CA "
                                f"bundle: {reason}") from exc  # fmt: skip
    return {"ssl_cert_reqs": "required", "ssl_check_hostname": True,
            "ssl_ca_certs": str(ca_file) if ca_file is not None else None}  # fmt: skip


def session_backend(settings: Settings) -> SessionBackend:
    """In memory for one replica; in Redis (``ERLMCP_REDIS_URL``) when replicas share sessions."""
    if settings.redis_url is None:
        return SessionStore(max_sessions=settings.max_sessions, idle_seconds=settings.session_idle_seconds)
    # Fail fast while Redis is away: the default would be 5 s per attempt, retried 10 times. One immediate retry
    # on a connection error replaces a pooled connection that died with an earlier Redis; none on a timeout.
    timeout = settings.redis_timeout_seconds
    url = settings.redis_url.get_secret_value()
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                            retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
                            **_redis_tls(url, settings))  # fmt: skip
    return RedisSessionStore(client, max_sessions=settings.max_sessions, idle_seconds=settings.session_idle_seconds)


class _McpFastPath:
    """Pure ASGI middleware: ``/mcp`` goes straight to the MCP endpoint, past the router and FastAPI's request
    plumbing (the hot path); every other path goes on as usual."""

    def __init__(self, app: ASGIApp, endpoint: McpEndpoint, *, max_in_flight: int = 0, metrics: Metrics | None = None):
        self._app = app
        self._endpoint = endpoint
        self._max_in_flight = max_in_flight  # POSTs answered at once; 0: no bound
        self._in_flight = 0
        self._shed = metrics.requests_shed if metrics is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/mcp":
            await self._app(scope, receive, send)
            return
        if self._max_in_flight and scope["method"] == "POST":
            if self._in_flight >= self._max_in_flight:
                await self._overloaded(scope, receive, send)
                return
            self._in_flight += 1
            try:
                await self._answer(scope, receive, send)
            finally:
                self._in_flight -= 1
            return
        await self._answer(scope, receive, send)

    async def _overloaded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Shed a request at once, so that it is retried elsewhere rather than queued until it times out."""
        if self._shed is not None:
            self._shed.inc()
        message = f"Server overloaded: {self._in_flight} requests in progress; retry after 1 s"
        body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}})
        await Response(body, status_code=503, media_type="application/json",
                       headers={"Retry-After": "1"})(scope, receive, send)  # fmt: skip

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._endpoint.handle(Request(scope, receive))
        except Exception:  # never a stack trace on the wire; the log has it
            log.exception("the MCP endpoint failed")
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"Internal error"}}'
            response = Response(body, status_code=500, media_type="application/json")
        await response(scope, receive, send)


# What a browser MCP client sends and must be able to read (2025-11-25 and 2026-07-28 headers).
_CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept", "Mcp-Session-Id", "MCP-Protocol-Version",
                         "Last-Event-ID", "Mcp-Method", "Mcp-Name", "X-API-Key", "traceparent", "tracestate",
                         "X-Request-ID")  # fmt: skip
_CORS_RESPONSE_HEADERS = ("Mcp-Session-Id", "WWW-Authenticate", "Retry-After", "X-Request-ID")


def cors_options(origins: Sequence[str]) -> dict[str, Any]:
    """CORS for browser clients from ``origins``: preflights answered, the session header readable."""
    return {"allow_origins": list(origins), "allow_methods": ["GET", "POST", "DELETE"], "max_age": 600,
            "allow_headers": list(_CORS_REQUEST_HEADERS), "expose_headers": list(_CORS_RESPONSE_HEADERS)}  # fmt: skip


class _Front:
    """What uvicorn serves: ``/mcp`` through the metrics-and-log wrapper straight to the endpoint; everything
    else (health, /ws, /sse, 404s) through the whole FastAPI application."""

    def __init__(self, app: FastAPI, metrics: Metrics, *, cors_origins: Sequence[str] = (), max_in_flight: int = 0):
        self._app = app
        fast = _McpFastPath(app, app.state.mcp_endpoint, max_in_flight=max_in_flight, metrics=metrics)
        mcp = _ObserveRequests(fast, metrics)
        self._mcp: ASGIApp = CORSMiddleware(mcp, **cors_options(cors_origins)) if cors_origins else mcp
        self._state: ServerState = app.state.erlmcp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._state.draining and scope["type"] == "http":
            send = _closing(send)
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await self._mcp(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def _closing(send: Send) -> Send:
    """``send`` with ``Connection: close`` on the response: while the server drains, a keep-alive client opens its
    next request on a new connection (to another replica, /readyz being 503), instead of reusing one that the
    server is about to close, where a request sent as it closes would be reset unanswered."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing


def create_app(settings: Settings, *, metrics: Metrics, state: ServerState | None = None) -> FastAPI:
    """The MCP application: health endpoints and the MCP endpoint at ``/mcp``.

    Raises:
        SettingsError: authentication is on without usable API keys.
        CatalogError: the catalogue cannot be loaded.
    """
    state = state or ServerState()
    api_keys = load_api_keys(settings)
    runtime = CatalogRuntime(workers=settings.tool_workers, worker_memory_mb=settings.tool_worker_memory_mb or None,
                             threads=settings.tool_threads)  # fmt: skip

    reloadable = settings.catalog not in (None, *PROFILES) and settings.catalog_reload_seconds > 0

    def load() -> Features:
        return load_features(settings.catalog, runtime=runtime, timeout_seconds=settings.tool_timeout_seconds,
                             page_size=settings.page_size, reloadable=reloadable)  # fmt: skip

    features = load()
    key = settings.request_state_key.get_secret_value().encode() if settings.request_state_key else None
    if key is None:
        log.info("requestState is sealed with a key made at start-up; replicas need ERLMCP_REQUEST_STATE_KEY")
    sealer = RequestStateSealer(key or secrets.token_bytes(32))
    dispatcher = Dispatcher(features=features, server_name="erlmcp", server_version=__version__, sealer=sealer)
    sessions = session_backend(settings)
    endpoint = McpEndpoint(
        dispatcher=dispatcher,
        sessions=sessions,
        authenticator=authenticator(settings, api_keys),
        limiter=rate_limiter(settings, sessions),
        trusted_proxies=parse_networks(settings.trusted_proxies),
        origins=OriginPolicy(
            bind_host=settings.host,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=[*settings.allowed_origins, *settings.cors_origins],
        ),
        metrics=metrics,
        options=TransportOptions(
            max_request_bytes=settings.max_request_bytes,
            sse_retry_ms=settings.sse_retry_ms,
            keepalive_seconds=settings.sse_keepalive_seconds,
            stateless=settings.stateless,
            initialize_per_minute=settings.initialize_per_minute,
        ),
    )

    watcher = None
    if reloadable:
        assert settings.catalog is not None

        async def serve_features(new: Features, changes: list[str]) -> None:
            dispatcher.replace_features(new)
            for method in changes:
                await endpoint.announce(method, {})

        watcher = CatalogWatcher(Path(settings.catalog), load=load, current=features, serve=serve_features,
                                 interval_seconds=settings.catalog_reload_seconds)  # fmt: skip

    loop: list[asyncio.AbstractEventLoop] = []  # the serving loop, known once the lifespan starts
    metrics.watch(sessions=lambda: len(sessions), tasks=lambda: len(asyncio.all_tasks(loop[0])) if loop else 0,
                  workers=lambda: runtime.pool.live_workers)  # fmt: skip

    exporter = cloud_monitoring_exporter(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop.append(asyncio.get_running_loop())
        background = [asyncio.create_task(_expire_idle_sessions(sessions, settings.session_idle_seconds))]
        if watcher is not None:
            background.append(asyncio.create_task(watcher.run()))
        if exporter is not None:
            background.append(asyncio.create_task(exporter.run()))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)  # the exporter writes once more
            await runtime.aclose()

    app = FastAPI(title="erlmcp", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.erlmcp = state
    app.state.mcp_endpoint = endpoint
    app.state.catalog_runtime = runtime

    state.dependency = sessions.unavailable

    async def livez() -> Response:
        return _health(draining=False)

    async def readyz() -> Response:
        return await _readiness(state)

    app.add_api_route("/livez", livez, methods=["GET"], include_in_schema=False)
    for path in ("/readyz", "/healthz", "/health"):
        app.add_api_route(path, readyz, methods=["GET"], include_in_schema=False)
    if settings.jwt_enabled:
        metadata = orjson.dumps(protected_resource_metadata(settings))

        async def resource_metadata() -> Response:
            return Response(metadata, media_type="application/json", headers={"Cache-Control": "max-age=3600"})

        app.add_api_route(METADATA_PATH, resource_metadata, methods=["GET"], include_in_schema=False)
    app.add_api_websocket_route("/ws", websocket_handler(endpoint, max_message_bytes=settings.max_request_bytes))
    legacy = LegacySse(endpoint, max_request_bytes=settings.max_request_bytes,
                       keepalive_seconds=settings.sse_keepalive_seconds)  # fmt: skip
    app.state.legacy_sse = legacy
    app.add_api_route("/sse", legacy.open, methods=["GET"], include_in_schema=False)
    app.add_api_route("/messages", legacy.post, methods=["POST"], include_in_schema=False)
    app.add_middleware(_McpFastPath, endpoint=endpoint)  # /mcp, every method: the router never sees it
    app.add_middleware(_ObserveRequests, metrics=metrics)  # added last: outermost, so it sees /mcp too
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings.cors_origins))
    log.info(
        "configured",
        tools=list(features.tools.names),
        auth="off"
        if settings.no_auth
        else "+".join((["api-key"] if api_keys else []) + (["jwt"] if settings.jwt_enabled else [])),
        catalog=settings.catalog or "built-in",
    )
    if settings.no_auth:
        log.warning("authentication is off: anyone who reaches the port can call every tool (--no-auth)")
    return app


def create_metrics_app(metrics: Metrics, state: ServerState | None = None) -> Starlette:
    """The metrics application: Prometheus text format at ``/metrics``, and the health endpoints again (plain
    HTTP, no credentials), for kubelet probes when the MCP listener demands client certificates."""

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    health = state or ServerState()

    async def livez(_: Request) -> Response:
        return _health(draining=False)

    async def readyz(_: Request) -> Response:
        return await _readiness(health)

    routes = [Route("/metrics", metrics_endpoint, methods=["GET"]), Route("/livez", livez, methods=["GET"])]
    routes += [Route(path, readyz, methods=["GET"]) for path in ("/readyz", "/healthz", "/health")]
    return Starlette(routes=routes)


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by :func:`serve`, which stops both listeners together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve_stdio_only(settings: Settings) -> None:
    """Serve one client over stdin and stdout (``--transport stdio``): no listeners, no API keys (the client
    started this process), logs on stderr."""
    local = settings.model_copy(update={"no_auth": True})
    app = create_app(local, metrics=Metrics(__version__))
    await serve_stdio(app.state.mcp_endpoint, max_message_bytes=settings.max_request_bytes)
    app.state.mcp_endpoint.shutdown()
    await app.state.catalog_runtime.aclose()  # no lifespan runs without a listener


async def serve(settings: Settings) -> None:
    """Run the MCP and metrics listeners (and TCP, when configured) until SIGTERM or SIGINT, then drain and stop."""
    if settings.transport == "stdio":
        await serve_stdio_only(settings)
        return
    metrics = Metrics(__version__)
    state = ServerState()
    app = create_app(settings, metrics=metrics, state=state)
    tcp = None
    if settings.tcp_port is not None:
        try:
            tcp = await serve_tcp(app.state.mcp_endpoint, host=settings.host, port=settings.tcp_port,
                                  max_message_bytes=settings.max_request_bytes)  # fmt: skip
        except OSError as exc:
            raise ListenerError(f"the TCP listener cannot bind {settings.host}:{settings.tcp_port}: {exc}") from exc
    # proxy_headers off: X-Forwarded-* would be trusted from 127.0.0.1 only, which is not where the load
    # balancer's requests come from; the middleware would cost every request for nothing.
    common: dict[str, Any] = {"log_config": None, "access_log": False, "server_header": False, "proxy_headers": False}
    main_config = uvicorn.Config(
        _Front(app, metrics, cors_origins=settings.cors_origins, max_in_flight=settings.max_concurrent_requests),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        http=guarded_protocol(
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            write_timeout=settings.write_timeout_seconds,
        ),  # fmt: skip
        **common,
    )
    tls = serving_tls(settings)
    if tls is not None:
        main_config.load()
        main_config.ssl = tls.context  # uvicorn serves whatever context the loaded config holds
    main = _Server(main_config)
    metrics_server = _Server(
        uvicorn.Config(
            create_metrics_app(metrics, state), host=settings.host, port=settings.metrics_port, lifespan="off", **common
        )
    )

    def close() -> None:
        app.state.mcp_endpoint.shutdown()  # end the long-lived streams, or they would hold the drain open
        app.state.legacy_sse.close()
        if tcp is not None:
            tcp.close()
        main.should_exit = True
        metrics_server.should_exit = True

    def stop(signum: int) -> None:
        if state.draining:  # a second signal: stop now
            close()
            return
        log.info("stopping", signal=signal.Signals(signum).name, drain_seconds=settings.drain_seconds)
        state.draining = True  # /readyz answers 503 from now on, so endpoints and load balancers let go
        loop.call_later(settings.drain_seconds, close)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    log.info("starting", host=settings.host, port=settings.port, metrics_port=settings.metrics_port,
             tcp_port=settings.tcp_port, version=__version__,
             event_loop=type(loop).__module__.split(".")[0])  # "uvloop" or "asyncio"  # fmt: skip

    async def run(server: _Server, other: _Server) -> bool:
        """Serve until told to stop; False when the listener could not start (uvicorn exits on bind errors)."""
        try:
            await server.serve()
        except SystemExit:
            other.should_exit = True  # one listener without the other is no server: stop both
            return False
        return server.started

    # Everything built so far lives as long as the process: keep the cycle collector from scanning it again.
    gc.freeze()
    try:
        started = await asyncio.gather(run(main, metrics_server), run(metrics_server, main))
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await app.state.mcp_endpoint.aclose()
    if not all(started):
        raise ListenerError("a listener could not start; the log above says why")
