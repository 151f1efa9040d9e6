"""The one settings object: flags, ``ERLMCP_``-prefixed environment variables, and mounted files.

Built once by the entry point and handed down; nothing below the entry point reads the environment.
Precedence, highest first: command-line flags, environment variables, field defaults.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.runtime.pool import MIN_MEMORY_LIMIT_MB
from app.security.clients import parse_networks
from app.security.keys import ApiKey, KeyFileError, read_key_file
from app.security.limits import LimitOverrides, Limits, parse_limits

__all__ = ["LogFormat", "Settings", "SettingsError", "load_api_keys"]


class SettingsError(ValueError):
    """The configuration cannot run a server; the message says what to change."""


class LogFormat(StrEnum):
    """How log lines are rendered."""

    JSON = "json"
    CONSOLE = "console"
    AUTO = "auto"  # console on a terminal, JSON otherwise


class Settings(BaseSettings):
    """Everything the server needs to start, validated before anything listens."""

    model_config = SettingsConfigDict(env_prefix="ERLMCP_", extra="forbid", frozen=True)

    transport: Literal["http", "stdio"] = Field(
        "http", description="http: listeners on the ports below; stdio: one client on stdin/stdout."
    )
    host: str = Field("127.0.0.1", description="Address the MCP HTTP listener binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port of the MCP HTTP listener (0 picks a free port).")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Port of the Prometheus /metrics listener.")
    tcp_port: int | None = Field(None, ge=0, le=65535, description="Port of the newline-delimited TCP listener.")
    catalog: str | None = Field(
        None, description="Catalogue file (YAML), or the name of a built-in profile (conformance); default built-in."
    )
    api_key_file: Path | None = Field(None, description="File of accepted API keys, one per line.")
    no_auth: bool = Field(False, description="Turn authentication off (local development only).")
    jwt_public_key_file: Path | None = Field(None, description="PEM public key that signs accepted JWT bearer tokens.")
    jwt_jwks_url: str | None = Field(None, description="JWKS URL of the token issuer (instead of a key file).")
    jwt_issuer: str | None = Field(None, description="The iss every accepted token must carry.")
    jwt_audience: str | None = Field(
        None, description="The aud every accepted token must carry (default: resource_url)."
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"], description="Accepted token signature algorithms."
    )
    jwt_leeway_seconds: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp and nbf.")
    jwt_audience_limits: dict[str, str] = Field(
        default_factory=dict,
        description='Limits of the tokens of an audience, as JSON: {"AUDIENCE": "rate=50,burst=200,initialize=600,'
        'sessions=500"}, each principal held to them on its own; the first audience (in this order) among the '
        "token's aud values applies; what it leaves out keeps the server's defaults (as in the API key file).",
    )
    jwks_min_refresh_seconds: float = Field(30.0, ge=0, description="Fewest seconds between two JWKS fetches.")
    resource_url: str | None = Field(
        None, description="This server's public URL: the token audience and the RFC 9728 resource identifier."
    )
    authorization_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Authorization servers listed in the protected-resource metadata."
    )
    log_level: str = Field("INFO", description="Lowest log level written.")
    log_format: LogFormat = Field(LogFormat.AUTO, description="json, console or auto.")
    library_log_level: str = Field(
        "WARNING",
        description="Lowest log level written by third-party libraries (httpx, httpcore, urllib3, websockets, "
        "Google clients; never below log_level): at INFO and DEBUG they log every upstream URL and header; WARNING "
        "keeps their problems.",
    )
    access_log: bool = Field(
        True, description="Write one access line (Cloud Logging's httpRequest) per HTTP request, at INFO."
    )
    log_flush_seconds: float = Field(
        0.05,
        gt=0,
        le=3600,
        description="How often the log's buffer is written to stderr (sooner when it fills); the lines still in it "
        "are written at shutdown.",
    )
    tool_timeout_seconds: float = Field(30.0, gt=0, description="Longest a tool call may run.")
    tool_workers: int = Field(2, ge=1, le=64, description="Worker processes for tools with isolation: process.")
    tool_worker_memory_mb: int = Field(
        512, ge=0, description="Address-space limit of each tool worker process, in MiB (0: none; else at least 64)."
    )
    tool_threads: int = Field(16, ge=1, le=256, description="Threads for sync Python tools (never the event loop).")
    tool_cancel_restarts_per_minute: int = Field(
        10,
        ge=0,
        description="Tool workers (isolation: process) each principal's cancelled calls may kill, and so restart, "
        "per minute. Within it a cancelled call stops at once; past it the call runs on until it ends (its result "
        "discarded) or times out. 10: a fresh worker costs about 50 ms of CPU, so at most about 1% of a core per "
        "principal; 0: a cancel never kills a worker.",
    )
    cloud_monitoring_project: str | None = Field(
        None, description="Write the five custom metrics to Cloud Monitoring in this project (default: off)."
    )
    cloud_monitoring_location: str = Field("global", description="generic_task location: the region or zone.")
    cloud_monitoring_namespace: str = Field("default", description="generic_task namespace: the Kubernetes namespace.")
    cloud_monitoring_task_id: str | None = Field(None, description="generic_task task_id (default: the host name).")
    cloud_monitoring_interval_seconds: float = Field(60.0, ge=10, description="Seconds between two exports.")
    cloud_monitoring_endpoint: str | None = Field(
        None, description="HOST:PORT of a local server of the Monitoring API, spoken to in plaintext (tests only)."
    )
    catalog_reload_seconds: float = Field(
        2.0, ge=0, description="How often the catalogue file is checked for changes (0: never reloaded)."
    )
    max_concurrent_requests: int = Field(
        256,
        ge=0,
        description="POST /mcp requests answered at once; more get 503 with Retry-After at once (0: no bound).",
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Largest accepted request body.")
    max_batch_items: int = Field(
        100,
        gt=0,
        description="Most messages in one 2025-03-26 JSON-RPC batch; a larger batch is refused whole (413) before "
        "any of it runs. 100: the chart's rate burst, so a batch holds no more than a client may send at once.",
    )
    max_batch_concurrency: int = Field(
        8,
        gt=0,
        description="Most requests of one batch run at once (the others wait their turn). 8: half the tool threads, "
        "so that one POST cannot take every thread or open dozens of upstream calls at the same time.",
    )
    max_batch_response_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Most bytes of answers one batch returns; the requests past it are answered with an error "
        "saying so (most of them without running). 4 MiB: as much as one request may send.",
    )
    drain_seconds: float = Field(
        0.0, ge=0, description="After SIGTERM, keep serving with /readyz at 503 this long, so traffic moves away."
    )
    stateless: bool = Field(False, description="Keep no sessions (for Cloud Run-style autoscaling).")
    initialize_per_minute: int = Field(
        600,
        gt=0,
        description="initialize requests allowed per client (a principal at its address) per minute. 600 (10 a "
        "second): the session quota already bounds the sessions a client holds, and every initialize also takes a "
        "rate token, so this bounds only session churn; 60 throttled honest clients (one conformance-suite run "
        "opens 34 sessions in a second, an agent platform one per conversation).",
    )
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="Requests per second each client may send on average (0: no limit)."
    )
    rate_limit_burst: int = Field(100, gt=0, description="Requests a client may send at once before the rate holds.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed to call the server (CORS); also accepted Origins."
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) to serve MCP over TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of the TLS certificate.")
    tls_client_ca_file: Path | None = Field(None, description="CA bundle client certificates must chain to (mTLS).")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Proxies (CIDR) whose X-Forwarded-For names the client."
    )
    redis_url: SecretStr | None = Field(
        None, description="redis://... to share sessions and event streams between replicas (default: in memory)."
    )
    redis_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle trusted for a rediss:// redis_url (default: the system trust store), e.g. a "
        "Memorystore instance's own CA; the server's host name or address is still checked against its certificate.",
    )
    redis_timeout_seconds: float = Field(
        1.0,
        gt=0,
        le=30,
        description="Longest a Redis connection attempt or command may take before the request fails with 503 "
        "(Retry-After) and readiness checks Redis again.",
    )
    max_sessions: int = Field(10_000, gt=0, description="Most concurrent sessions; more initialize get 503.")
    max_sessions_per_principal: int = Field(
        100,
        ge=0,
        description="Most concurrent sessions one client (API key or token subject; the address when anonymous) "
        "may hold; more initialize are refused; 0: no quota",
    )
    max_connections_per_principal: int = Field(
        200,
        ge=0,
        description="Most long-lived connections one client (API key or token subject; the address when anonymous) "
        "may hold open at once on each replica: legacy SSE streams, GET /mcp streams (standalone and resumed), "
        "WebSockets and authenticated TCP connections; more are refused (429); 0: no cap. 200: twice the default "
        "session quota, so that each of the 100 sessions a client may hold can keep its GET stream open and "
        "resume another at the same time (a WebSocket or TCP connection is a session of its own).",
    )
    session_idle_seconds: float = Field(1800.0, gt=0, description="An idle session ends after this long.")
    sse_retry_ms: int = Field(1000, ge=0, description="The SSE retry delay suggested to clients.")
    sse_keepalive_seconds: float = Field(15.0, gt=0, description="A keep-alive comment on quiet SSE streams.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host headers accepted (empty: loopback names when bound to loopback)."
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origin headers accepted (empty: same host as Host, or loopback)."
    )
    request_state_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="Key sealing 2026-07-28 requestState (at least 32 characters; the same on every replica).",
    )
    page_size: int = Field(100, gt=0, description="Items per page of the list methods.")
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request's headers (MCP and metrics ports) must arrive within this, as must a TLS handshake, "
        "the first message of a TCP connection and of a WebSocket after its upgrade; a late connection is closed.",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="A request's body must arrive within this of its headers."
    )
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="Largest header block accepted (else 431).")
    write_timeout_seconds: float = Field(
        30.0, gt=0, description="A client that reads none of its response (or stream) this long is cut off."
    )
    shutdown_timeout_seconds: float = Field(20.0, ge=0, description="How long in-flight requests may drain.")

    @field_validator("log_level", "library_log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator(
        "allowed_hosts",
        "allowed_origins",
        "jwt_algorithms",
        "authorization_servers",
        "trusted_proxies",
        "cors_origins",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("jwt_audience_limits")
    @classmethod
    def _audience_limits(cls, value: dict[str, str]) -> dict[str, str]:
        for audience, limits in value.items():
            try:
                parse_limits(limits)
            except ValueError as exc:
                raise ValueError(f"the limits of the audience {audience!r}: {exc}") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # refuse what is not an address or a CIDR block, naming it
        return value

    @property
    def jwt_enabled(self) -> bool:
        """Whether JWT bearer tokens are accepted."""
        return self.jwt_public_key_file is not None or self.jwt_jwks_url is not None

    @property
    def default_limits(self) -> Limits:
        """The limits of a principal whose key or token audience sets none of its own."""
        return Limits(
            rate=self.rate_limit_per_second,
            burst=self.rate_limit_burst,
            initialize=self.initialize_per_minute,
            sessions=self.max_sessions_per_principal,
        )

    @property
    def audience_limits(self) -> list[tuple[str, LimitOverrides]]:
        """The limits of each token audience, in the order given."""
        return [(audience, parse_limits(limits)) for audience, limits in self.jwt_audience_limits.items()]

    @field_validator("tool_worker_memory_mb")
    @classmethod
    def _worker_memory(cls, megabytes: int) -> int:
        if 0 < megabytes < MIN_MEMORY_LIMIT_MB:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_MEMORY_LIMIT_MB}: a Python worker needs that much")
        return megabytes

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both tls_cert_file and tls_key_file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    @model_validator(mode="after")
    def _redis_tls(self) -> Settings:
        if self.redis_ca_file is None:
            return self
        if self.redis_url is None:
            raise ValueError("redis_ca_file is set but redis_url is not: the CA file would not be used")
        url = urlsplit(self.redis_url.get_secret_value())
        if url.scheme != "rediss":
            raise ValueError(
                f"redis_ca_file is set but redis_url is a {url.scheme}:// URL, which does not use TLS: "
                "use rediss:// (or leave redis_ca_file unset)"
            )
        # redis-py lets the URL's query override the client's arguments: the file would be silently ignored.
        overriding = sorted(set(parse_qs(url.query)) & {"ssl_ca_certs", "ssl_ca_path", "ssl_ca_data"})
        if overriding:
            raise ValueError(f"give the CA in redis_ca_file or in redis_url ({', '.join(overriding)}), not both")
        return self

    @model_validator(mode="after")
    def _jwt_complete(self) -> Settings:
        if self.jwt_public_key_file is not None and self.jwt_jwks_url is not None:
            raise ValueError("give jwt_public_key_file or jwt_jwks_url, not both")
        if self.jwt_enabled and not self.jwt_issuer:
            raise ValueError("JWT tokens are on (a key file or JWKS URL is set) but jwt_issuer is not")
        if self.jwt_enabled and not (self.jwt_audience or self.resource_url):
            raise ValueError(
                "JWT tokens are on but neither jwt_audience nor resource_url says which audience to accept"
            )
        if self.jwt_audience_limits and not self.jwt_enabled:
            raise ValueError("jwt_audience_limits is set but JWT tokens are off: the limits would not be used")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.port and self.port == self.metrics_port:
            raise ValueError(f"port and metrics_port must differ (both are {self.port})")
        return self


def load_api_keys(settings: Settings) -> tuple[ApiKey, ...]:
    """Read the accepted API keys named by the settings (the file format: :mod:`app.security.keys`).

    Raises:
        SettingsError: authentication is on but no key file is given, it cannot be read, a line is malformed,
            or it holds no key.
    """
    if settings.no_auth:
        return ()
    path = settings.api_key_file
    if path is None and settings.jwt_enabled:
        return ()  # bearer tokens only
    if path is None:
        raise SettingsError(
            "authentication is on but no API keys were given: pass --api-key-file FILE "
            "(or ERLMCP_API_KEY_FILE), or --no-auth for local development"
        )
    try:
        keys = read_key_file(path)
    except KeyFileError as exc:
        raise SettingsError(str(exc)) from exc
    if not keys:
        raise SettingsError(f"the API key file {path} holds no key (one key per line)")
    return keys
