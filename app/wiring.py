"""The server's parts, built from the settings: the MCP application (:func:`create_app`, the front door the
listener serves), the metrics application, and what they are made of (authentication, TLS, sessions, rate
limits, Cloud Monitoring export, RFC 9728 metadata)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from app import __version__
from app.catalog import load_catalog
from app.catalog.features import PROFILES, CatalogRuntime, load_features
from app.catalog.reload import CatalogWatcher
from app.features import Features
from app.middleware import FrontDoor, ServerState, health, readiness
from app.observability.logging import guard_logs
from app.observability.metrics import Metrics
from app.observability.redaction import redactor
from app.protocol.core import BatchLimits, ProtocolCore
from app.protocol.dispatcher import Dispatcher
from app.protocol.request_state import RequestStateSealer
from app.security.auth import ApiKeyAuthenticator, Authenticator, limits_of
from app.security.clients import parse_networks
from app.security.gate import Gate
from app.security.keys import ApiKey
from app.security.origin import OriginPolicy
from app.security.ratelimit import RateLimiter, TokenBuckets
from app.sessions.backend import session_backend
from app.sessions.store import SessionBackend
from app.settings import Settings, SettingsError, load_api_keys
from app.transports.legacy_sse import LegacySse
from app.transports.streamable_http import HttpOptions, McpEndpoint
from app.transports.tls import ServingTls
from app.transports.websocket import websocket_handler

if TYPE_CHECKING:
    from app.observability.cloud_monitoring import CloudMonitoringExporter

__all__ = [
    "METADATA_PATH",
    "authenticator",
    "cloud_monitoring_exporter",
    "create_app",
    "create_metrics_app",
    "protected_resource_metadata",
    "rate_limiter",
    "protocol_core",
    "serving_tls",
]

log = structlog.get_logger(__name__)


async def _expire_idle_sessions(sessions: SessionBackend, idle_seconds: float) -> None:
    """Release sessions whose client vanished without DELETE, whether or not other traffic comes (the stores also
    sweep when they are full); every quarter of the idle time, between 0.5 and 5 seconds."""
    interval = min(5.0, max(0.5, idle_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        sessions.expire()


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
        from app.security.tokens import JwtVerifier  # PyJWT and cryptography load only when tokens are accepted

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
    return Authenticator(
        keys,
        tokens,
        metadata_url=metadata_url,
        audience_limits=settings.audience_limits,
        token_leeway_seconds=settings.jwt_leeway_seconds,
    )


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

    labels = {
        "location": settings.cloud_monitoring_location,
        "namespace": settings.cloud_monitoring_namespace,
        "job": "erlmcp",
        "task_id": settings.cloud_monitoring_task_id or socket.gethostname(),
    }
    try:
        from google.cloud import monitoring_v3

        if settings.cloud_monitoring_endpoint:  # a local server of the API's protocol: plaintext, no credentials
            import grpc  # type: ignore[import-untyped]
            from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

            channel = grpc.insecure_channel(settings.cloud_monitoring_endpoint)
            client = monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
        else:
            client = monitoring_v3.MetricServiceClient()  # finds the credentials now: a missing one stops the start
        return CloudMonitoringExporter(
            metrics.registry,
            project_id=settings.cloud_monitoring_project,
            resource_labels=labels,
            client=client,
            interval_seconds=settings.cloud_monitoring_interval_seconds,
        )
    except Exception as exc:  # no credentials, a bad label: say so at start rather than fail later
        raise SettingsError(f"Cloud Monitoring export cannot start: {exc}") from exc


def rate_limiter(settings: Settings, sessions: SessionBackend) -> RateLimiter | None:
    """Token buckets per client: in Redis when sessions are (so the budget holds across replicas), else here.
    There are buckets even when the default rate is 0 (no limit): a key or token audience may set a rate."""
    if settings.redis_url is not None:  # the redis client loads only then (app.sessions.backend)
        from app.security.ratelimit import RedisTokenBuckets
        from app.sessions.redis import RedisSessionStore

        if isinstance(sessions, RedisSessionStore):
            return RedisTokenBuckets(sessions.redis, settings.rate_limit_per_second, settings.rate_limit_burst)
    return TokenBuckets(settings.rate_limit_per_second, settings.rate_limit_burst)


def protocol_core(
    settings: Settings,
    *,
    dispatcher: Dispatcher,
    sessions: SessionBackend,
    metrics: Metrics,
    api_keys: Sequence[ApiKey],
) -> ProtocolCore:
    """The protocol core every transport hands its messages to, behind the one gate."""
    gate = Gate(
        authenticator=authenticator(settings, api_keys),
        origins=OriginPolicy(
            bind_host=settings.host,
            allowed_hosts=settings.allowed_hosts,
            allowed_origins=[*settings.allowed_origins, *settings.cors_origins],
        ),
        metrics=metrics,
        max_message_bytes=settings.max_request_bytes,
        limiter=rate_limiter(settings, sessions),
        defaults=settings.default_limits,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        max_connections=settings.max_connections_per_principal,
    )
    batches = BatchLimits(
        max_items=settings.max_batch_items,
        concurrency=settings.max_batch_concurrency,
        max_response_bytes=settings.max_batch_response_bytes,
    )
    return ProtocolCore(dispatcher=dispatcher, sessions=sessions, gate=gate, metrics=metrics, batch_limits=batches)


def _secret_files(catalog: str | None) -> list[Path]:
    """The files the catalogue's http entries read their ``secrets`` from."""
    if catalog is None or catalog in PROFILES:
        return []
    loaded = load_catalog(Path(catalog))
    entries = (*loaded.tools, *loaded.resources, *loaded.resource_templates)
    return [path for entry in entries for path in getattr(entry, "secrets", {}).values()]


def _get_only(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
    """A route for GET alone: Starlette's take HEAD wherever they take GET, and a HEAD of ``/sse`` would open a
    stream whose body nobody reads, for as long as the connection lasts (405, as these routes always answered)."""
    route = Route(path, endpoint, methods=["GET"])
    route.methods = {"GET"}
    return route


async def _refusal(_: Request, exc: Exception) -> Response:
    """An unknown path (404) or a method a path does not take (405, with ``Allow``) as ``{"detail": ...}`` JSON:
    what these answers were when the routes were FastAPI's."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in {204, 304} or exc.status_code < 200:
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(settings: Settings, *, metrics: Metrics, state: ServerState | None = None) -> FrontDoor:
    """The MCP application, exactly as the listener serves it: the MCP endpoint at ``/mcp`` on the hot path
    (bounded by ``max_concurrent_requests``), and a Starlette application for the health endpoints, ``/ws``,
    ``/sse``, ``/messages`` and the metadata; each request observed once, CORS and the drain around both (see
    :class:`~app.middleware.FrontDoor`). Its ``state`` is the Starlette application's (``mcp_endpoint``,
    ``protocol_core``, ``legacy_sse``, ``catalog_runtime``, ``erlmcp``); its lifespan is the Starlette
    application's. (Plain Starlette routes, not FastAPI: nothing here needs request models or OpenAPI, whose
    models cost about 0.1 s and several MiB at every start.)

    Raises:
        SettingsError: authentication is on without usable API keys.
        CatalogError: the catalogue cannot be loaded.
    """
    state = state or ServerState()
    guard_logs(settings)  # before anything logs: the secrets in the settings never reach a line
    api_keys = load_api_keys(settings)
    runtime = CatalogRuntime(
        workers=settings.tool_workers,
        worker_memory_mb=settings.tool_worker_memory_mb or None,
        threads=settings.tool_threads,
        cancel_restarts_per_minute=settings.tool_cancel_restarts_per_minute,
        call_timeout_seconds=settings.tool_timeout_seconds,
    )

    reloadable = settings.catalog not in (None, *PROFILES) and settings.catalog_reload_seconds > 0

    def load() -> Features:
        loaded = load_features(
            settings.catalog,
            runtime=runtime,
            timeout_seconds=settings.tool_timeout_seconds,
            page_size=settings.page_size,
            reloadable=reloadable,
        )
        redactor().watch(_secret_files(settings.catalog))  # the log never holds what these files hold
        return loaded

    features = load()
    key = settings.request_state_key.get_secret_value().encode() if settings.request_state_key else None
    if key is None:
        log.info("requestState is sealed with a key made at start-up; replicas need ERLMCP_REQUEST_STATE_KEY")
    sealer = RequestStateSealer(key or secrets.token_bytes(32))
    dispatcher = Dispatcher(features=features, server_name="erlmcp", server_version=__version__, sealer=sealer)
    sessions = session_backend(settings)
    core = protocol_core(settings, dispatcher=dispatcher, sessions=sessions, metrics=metrics, api_keys=api_keys)
    endpoint = McpEndpoint(
        core,
        HttpOptions(
            sse_retry_ms=settings.sse_retry_ms,
            keepalive_seconds=settings.sse_keepalive_seconds,
            stateless=settings.stateless,
        ),
    )

    watcher = None
    if reloadable:
        assert settings.catalog is not None

        async def serve_features(new: Features, changes: list[str]) -> None:
            dispatcher.replace_features(new)
            for method in changes:
                await core.announce(method, {})

        watcher = CatalogWatcher(
            Path(settings.catalog),
            load=load,
            current=features,
            serve=serve_features,
            interval_seconds=settings.catalog_reload_seconds,
        )

    loop: list[asyncio.AbstractEventLoop] = []  # the serving loop, known once the lifespan starts
    metrics.watch(
        sessions=lambda: len(sessions),
        tasks=lambda: len(asyncio.all_tasks(loop[0])) if loop else 0,
        workers=lambda: runtime.pool.live_workers,
    )

    exporter = cloud_monitoring_exporter(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
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

    state.dependency = sessions.unavailable

    async def livez(_: Request) -> Response:
        return health(draining=False)

    async def readyz(_: Request) -> Response:
        return await readiness(state)

    routes: list[BaseRoute] = [_get_only("/livez", livez)]
    routes += [_get_only(path, readyz) for path in ("/readyz", "/healthz", "/health")]
    if settings.jwt_enabled:
        metadata = orjson.dumps(protected_resource_metadata(settings))

        async def resource_metadata(_: Request) -> Response:
            return Response(metadata, media_type="application/json", headers={"Cache-Control": "max-age=3600"})

        routes.append(_get_only(METADATA_PATH, resource_metadata))
    routes.append(WebSocketRoute("/ws", websocket_handler(core, first_message_seconds=settings.header_timeout_seconds)))
    legacy = LegacySse(core, keepalive_seconds=settings.sse_keepalive_seconds)
    routes.append(_get_only("/sse", legacy.open))
    routes.append(Route("/messages", legacy.post, methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _refusal})
    app.state.erlmcp = state
    app.state.mcp_endpoint = endpoint
    app.state.protocol_core = core
    app.state.catalog_runtime = runtime
    app.state.legacy_sse = legacy
    front = FrontDoor(
        app,
        endpoint,
        server=state,
        metrics=metrics,
        max_in_flight=settings.max_concurrent_requests,
        cors_origins=settings.cors_origins,
    )
    log.info(
        "configured",
        tools=list(features.tools.names),
        auth="off"
        if settings.no_auth
        else "+".join((["api-key"] if api_keys else []) + (["jwt"] if settings.jwt_enabled else [])),
        catalog=settings.catalog or "built-in",
        limits=str(settings.default_limits),
        key_limits=limits_of(api_keys),
        audience_limits={audience: str(limits) for audience, limits in settings.audience_limits},
    )
    if settings.no_auth:
        log.warning("authentication is off: anyone who reaches the port can call every tool (--no-auth)")
    return front


def create_metrics_app(metrics: Metrics, state: ServerState | None = None) -> Starlette:
    """The metrics application: Prometheus text format at ``/metrics``, and the health endpoints again (plain
    HTTP, no credentials), for kubelet probes when the MCP listener demands client certificates."""

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    server = state or ServerState()

    async def livez(_: Request) -> Response:
        return health(draining=False)

    async def readyz(_: Request) -> Response:
        return await readiness(server)

    routes = [Route("/metrics", metrics_endpoint, methods=["GET"]), Route("/livez", livez, methods=["GET"])]
    routes += [Route(path, readyz, methods=["GET"]) for path in ("/readyz", "/healthz", "/health")]
    return Starlette(routes=routes)
