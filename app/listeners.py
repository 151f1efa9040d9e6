"""The listeners: :func:`serve` runs the MCP listener (the front door :func:`~app.wiring.create_app` builds), the
metrics listener and, when configured, the TCP one, until SIGTERM or SIGINT, then drains and stops them together;
:func:`serve_stdio_only` serves one client over stdin and stdout instead. :class:`ListenerError`: one could not
start."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import ssl
from collections.abc import Generator
from typing import Any

import structlog
import uvicorn

from app import __version__
from app.middleware import ServerState
from app.observability.metrics import Metrics
from app.settings import Settings
from app.transports.guard import guarded_protocol
from app.transports.stdio import serve_stdio
from app.transports.tcp import serve_tcp
from app.wiring import create_app, create_metrics_app, serving_tls

__all__ = ["ListenerError", "serve", "serve_stdio_only"]

log = structlog.get_logger(__name__)


class ListenerError(RuntimeError):
    """A listener could not start (the port is taken or the address cannot be bound)."""


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by :func:`serve`, which stops both listeners together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _TlsServer(_Server):
    """A TLS listener whose clients must finish the handshake within ``handshake_timeout``; the guarded protocol's
    deadlines take over from there. uvicorn makes its TLS listener without a handshake deadline, which leaves the
    event loop's (60 s): a client that connected and said nothing would be held that long, whatever the header
    deadline. So this server makes the listener itself."""

    def __init__(self, config: uvicorn.Config, context: ssl.SSLContext, *, handshake_timeout: float) -> None:
        super().__init__(config)
        self._context = context
        self._handshake_timeout = handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan and the shared state, but no listener of uvicorn's
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        try:
            server = await asyncio.get_running_loop().create_server(
                protocol, host=config.host, port=config.port, ssl=self._context,
                ssl_handshake_timeout=self._handshake_timeout, backlog=config.backlog,
            )  # fmt: skip
        except OSError as exc:
            log.error("the MCP listener cannot bind", host=config.host, port=config.port, error=str(exc))
            await self.lifespan.shutdown()
            raise SystemExit(1) from exc  # as uvicorn does when it cannot bind: run() below reports it
        self.servers = [server]


async def serve_stdio_only(settings: Settings) -> None:
    """Serve one client over stdin and stdout (``--transport stdio``): no listeners, no API keys (the client
    started this process), logs on stderr."""
    local = settings.model_copy(update={"no_auth": True})
    app = create_app(local, metrics=Metrics(__version__))
    await serve_stdio(app.state.protocol_core)
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
            tcp = await serve_tcp(
                app.state.protocol_core,
                host=settings.host,
                port=settings.tcp_port,
                first_message_seconds=settings.header_timeout_seconds,
            )
        except OSError as exc:
            raise ListenerError(f"the TCP listener cannot bind {settings.host}:{settings.tcp_port}: {exc}") from exc
    # Both HTTP listeners take the guarded protocol (app/transports/guard.py): header, body and write deadlines, and
    # the header size cap. The metrics listener answers the kubelet's probes: slow or silent connections must not
    # hold it any longer than the MCP port.
    limits: dict[str, Any] = {
        "header_timeout": settings.header_timeout_seconds,
        "body_timeout": settings.body_timeout_seconds,
        "max_header_bytes": settings.max_header_bytes,
        "write_timeout": settings.write_timeout_seconds,
    }
    tls = serving_tls(settings)
    # proxy_headers off: X-Forwarded-* would be trusted from 127.0.0.1 only, which is not where the load
    # balancer's requests come from; the middleware would cost every request for nothing.
    common: dict[str, Any] = {"log_config": None, "access_log": False, "server_header": False, "proxy_headers": False}
    main_config = uvicorn.Config(
        app,  # the front door: /mcp bounded and observed, everything else through Starlette routes, CORS, the drain
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
        http=guarded_protocol(**limits, on_cut=lambda reason: metrics.connection_refused("http", reason)),
        **common,
    )
    if tls is None:
        main = _Server(main_config)
    else:  # the handshake gets the header deadline too, and the headers get theirs once it is done
        main = _TlsServer(main_config, tls.context, handshake_timeout=settings.header_timeout_seconds)
    metrics_server = _Server(
        uvicorn.Config(
            create_metrics_app(metrics, state),
            host=settings.host,
            port=settings.metrics_port,
            lifespan="off",
            http=guarded_protocol(**limits, on_cut=lambda reason: metrics.connection_refused("metrics", reason)),
            **common,
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
    log.info(
        "starting",
        host=settings.host,
        port=settings.port,
        metrics_port=settings.metrics_port,
        tcp_port=settings.tcp_port,
        version=__version__,
        event_loop=type(loop).__module__.split(".")[0],  # "uvloop" or "asyncio"
    )

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
        await app.state.protocol_core.aclose()
    if not all(started):
        raise ListenerError("a listener could not start; the log above says why")
