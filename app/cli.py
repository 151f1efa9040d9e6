"""``python -m app``: parse flags, build the settings, run the server."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from app import __version__
from app.catalog import CatalogError
from app.listeners import ListenerError, serve
from app.observability.logging import close_logging, configure_logging
from app.observability.tracing import configure_tracing
from app.settings import LogFormat, Settings, SettingsError

__all__ = ["build_parser", "main", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; every flag also has an ERLMCP_-prefixed environment variable."""
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Run the erlmcp MCP server: MCP over HTTP at /mcp, health at /livez and /readyz "
        "(/health and /healthz are aliases), Prometheus metrics at /metrics on their own port.",
        epilog="Flags override environment variables, which override defaults. Secrets may also be files named "
        "after the variables (erlmcp_redis_url, erlmcp_request_state_key, ...) in the folder ERLMCP_SECRETS_DIR "
        f"names, or in several folders separated by '{os.pathsep}': where two hold the same file, the later folder's "
        "file wins; an environment variable wins over any file. Example: python -m app --no-auth --port 8080",
    )
    arg = parser.add_argument
    arg(
        "--transport",
        choices=["http", "stdio"],
        help="http: HTTP listeners (/mcp, /ws, /sse) and optional TCP; stdio: one client on stdin/stdout, "
        "logs on stderr (env ERLMCP_TRANSPORT; default http)",
    )
    arg("--host", help="address to bind (env ERLMCP_HOST; default 127.0.0.1, 0.0.0.0 in the container image)")
    arg("--port", type=int, help="MCP HTTP port (env ERLMCP_PORT; default 8080)")
    arg("--metrics-port", type=int, help="Prometheus metrics port (env ERLMCP_METRICS_PORT; default 9090)")
    arg(
        "--tcp-port",
        type=int,
        help="also serve newline-delimited JSON-RPC over TCP on this port (env ERLMCP_TCP_PORT; default off)",
    )
    arg(
        "--catalog",
        metavar="PATH",
        help="catalogue YAML file, or 'conformance' for the MCP conformance-suite fixtures "
        "(env ERLMCP_CATALOG; default: the built-in catalogue)",
    )
    arg("--api-key-file", type=Path, metavar="FILE", help="accepted API keys, one per line (env ERLMCP_API_KEY_FILE)")
    arg(
        "--jwt-public-key-file",
        type=Path,
        metavar="PEM",
        help="accept JWT bearer tokens signed by this public key (env ERLMCP_JWT_PUBLIC_KEY_FILE)",
    )
    arg(
        "--jwt-jwks-url",
        metavar="URL",
        help="accept JWT bearer tokens signed by a key of this JWKS "
        "(env ERLMCP_JWT_JWKS_URL); also set --jwt-issuer and --resource-url or ERLMCP_JWT_AUDIENCE",
    )
    arg("--jwt-issuer", metavar="ISS", help="the iss accepted tokens carry (env ERLMCP_JWT_ISSUER)")
    arg(
        "--resource-url",
        metavar="URL",
        help="this server's public URL: the tokens' audience and the RFC 9728 "
        "resource at /.well-known/oauth-protected-resource (env ERLMCP_RESOURCE_URL)",
    )
    arg(
        "--tls-cert-file",
        type=Path,
        metavar="PEM",
        help="serve MCP over TLS with this certificate (chain) "
        "(env ERLMCP_TLS_CERT_FILE); TLS 1.2 at least, 1.3 when the client has it",
    )
    arg("--tls-key-file", type=Path, metavar="PEM", help="the certificate's private key (env ERLMCP_TLS_KEY_FILE)")
    arg(
        "--tls-client-ca-file",
        type=Path,
        metavar="PEM",
        help="require client certificates from this CA: mutual TLS (env ERLMCP_TLS_CLIENT_CA_FILE)",
    )
    arg(
        "--no-auth",
        action="store_true",
        default=None,
        help="turn authentication off, for local development only (env ERLMCP_NO_AUTH=true)",
    )
    arg("--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL (env ERLMCP_LOG_LEVEL; default INFO)")
    arg(
        "--log-format",
        choices=[f.value for f in LogFormat],
        help="json, console, or auto: console on a terminal (env ERLMCP_LOG_FORMAT; default auto)",
    )
    arg(
        "--tool-timeout",
        dest="tool_timeout_seconds",
        type=float,
        metavar="SECONDS",
        help="longest a tool call may run (env ERLMCP_TOOL_TIMEOUT_SECONDS; default 30)",
    )
    arg(
        "--tool-workers",
        type=int,
        metavar="N",
        help="worker processes for tools marked isolation: process (env ERLMCP_TOOL_WORKERS; default 2)",
    )
    arg(
        "--tool-worker-memory-mb",
        type=int,
        metavar="MIB",
        help="address-space limit of each tool worker; a tool "
        "that needs more gets an error and its worker is replaced (env ERLMCP_TOOL_WORKER_MEMORY_MB; default 512, "
        "0: none)",
    )
    arg(
        "--catalog-reload-seconds",
        type=float,
        metavar="SECONDS",
        help="how often the catalogue file is checked "
        "for changes, served without a restart (env ERLMCP_CATALOG_RELOAD_SECONDS; default 2, 0: never)",
    )
    arg(
        "--drain-seconds",
        type=float,
        metavar="SECONDS",
        help="after SIGTERM, keep serving with /readyz answering 503 this long before closing "
        "(env ERLMCP_DRAIN_SECONDS; default 0; the chart sets 5)",
    )
    arg("--version", action="version", version=f"erlmcp {__version__}")
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the flags given, the environment, and the defaults.

    Raises:
        SystemExit: a flag or environment variable has a wrong value (argparse-style exit code 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    given: dict[str, Any] = {key: value for key, value in vars(args).items() if value is not None}
    # Secrets may also come as files named after the variables (erlmcp_request_state_key, erlmcp_redis_url, ...)
    # in the folders ERLMCP_SECRETS_DIR names (os.pathsep between two): what mounted Kubernetes Secrets and CSI
    # volumes give. pydantic-settings reads the folders last first: a later folder's file wins.
    secrets_dir = [folder for folder in os.environ.get("ERLMCP_SECRETS_DIR", "").split(os.pathsep) if folder] or None
    try:
        return Settings(**given, _secrets_dir=secrets_dir)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        parser.error(problems)
    raise AssertionError("unreachable")  # pragma: no cover


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (every Linux install: it is a dependency), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop wheels
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit code."""
    settings = settings_from_args(argv)
    configure_logging(
        settings.log_level,
        settings.log_format,
        gcp_project=os.environ.get("GOOGLE_CLOUD_PROJECT"),
        access_log=settings.access_log,
        flush_seconds=settings.log_flush_seconds,
    )
    # The standard OTEL_* variables decide on traces; the SDK's own parts read theirs (endpoint, headers, batching).
    stop_tracing = configure_tracing(os.environ, service_version=__version__, stdio=settings.transport == "stdio")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(settings))
    except (SettingsError, CatalogError) as exc:
        structlog.get_logger("app").error("cannot start", reason=str(exc))
        close_logging()  # the line above comes out before the plain one
        print(f"erlmcp: {exc}", file=sys.stderr)
        return 2
    except ListenerError as exc:
        close_logging()
        print(f"erlmcp: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_tracing()  # the spans still in the batch go out before the process ends
        close_logging()  # after uvicorn's graceful stop: what the log's buffer holds (later lines go straight out)
    return 0
