"""The session store the settings ask for: in this process, or in Redis (``ERLMCP_REDIS_URL``, TLS with
``rediss://``) when replicas share sessions."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

from app.sessions.memory import SessionStore
from app.sessions.store import SessionBackend
from app.settings import Settings, SettingsError

__all__ = ["session_backend"]


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
            raise SettingsError(
                f"redis_ca_file (ERLMCP_REDIS_CA_FILE) {ca_file} cannot be used as a PEM CA bundle: {reason}"
            ) from exc
    return {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(ca_file) if ca_file is not None else None,
    }


def session_backend(settings: Settings) -> SessionBackend:
    """In memory for one replica; in Redis (``ERLMCP_REDIS_URL``) when replicas share sessions. The redis client
    (and its OpenTelemetry SDK parts) is imported only for Redis; making it connects to nothing yet."""
    if settings.redis_url is None:
        return SessionStore(
            max_sessions=settings.max_sessions,
            idle_seconds=settings.session_idle_seconds,
            max_sessions_per_owner=settings.max_sessions_per_principal,
        )
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.sessions.redis import RedisSessionStore

    # Fail fast while Redis is away: the default would be 5 s per attempt, retried 10 times. One immediate retry
    # on a connection error replaces a pooled connection that died with an earlier Redis; none on a timeout.
    timeout = settings.redis_timeout_seconds
    url = settings.redis_url.get_secret_value()
    client = Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
        **_redis_tls(url, settings),
    )
    return RedisSessionStore(
        client,
        max_sessions=settings.max_sessions,
        idle_seconds=settings.session_idle_seconds,
        max_sessions_per_owner=settings.max_sessions_per_principal,
    )
