"""The secrets the erlmcp server reads, as Secret Manager secrets: which setting each feeds and how.

The seed design lists eleven secrets for the Erlang server. Six apply to this Python server; the rest name
things it does not have:

* kept: ``api-keys`` (the seed had none: API keys are how most MCP clients authenticate), ``jwt-public-key``
  (the seed's ``jwt-public-key``), ``tls-cert`` and ``tls-key``, ``tls-client-ca`` (the seed's ``ca-bundle``:
  the CAs client certificates must chain to, for mutual TLS), ``redis-url`` (the seed's ``redis-password``:
  the server takes one ``redis://:PASSWORD@host`` URL) and ``otel-ca-cert`` (the CA of an OTLP collector
  reached over TLS).
* dropped: ``erlang-cookie`` (no Erlang distribution), ``db-password`` (no database), ``jwt-private-key`` (the
  server verifies tokens, it never signs one: the issuer keeps its private key), ``grafana-password`` (no Grafana
  is installed; the chart ships a dashboard for yours) and ``backup-key`` (the server keeps no state to back up:
  sessions live in Redis or in memory).
* added: ``redis-ca``, the CA a ``rediss://`` Redis's certificate must chain to (Memorystore with in-transit
  encryption has its own server CA), a file (``ERLMCP_REDIS_CA_FILE``) beside ``redis-url``.

Every secret is optional: a deployment lists the ones it uses in ``secrets.keys`` of the configuration (default
``api-keys`` only); ``python -m deployer secrets apply`` (:mod:`deployer.gcp.secrets`) creates them as
``<name>-<key>`` and adds a version from ``--value KEY=FILE``, and each platform passes only those to the server.
The server itself never calls Secret Manager: it reads files and environment variables, so the same image runs
anywhere; the platform (Cloud Run's secret references, a GKE mount, a startup script) brings the values.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SERVER_SECRETS", "SecretSpec", "by_key"]


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """One secret: ``key`` (the secret's ID is ``<name>-<key>``), the server setting it feeds, and whether the
    server reads it from a file (``ERLMCP_..._FILE``, mounted) or an environment variable."""

    key: str
    env: str
    as_file: bool
    description: str

    def secret_id(self, prefix: str) -> str:
        return f"{prefix}-{self.key}"


SERVER_SECRETS: tuple[SecretSpec, ...] = (
    SecretSpec("api-keys", "ERLMCP_API_KEY_FILE", True, "accepted API keys, one per line"),
    SecretSpec("jwt-public-key", "ERLMCP_JWT_PUBLIC_KEY_FILE", True, "PEM public key that signs accepted JWTs"),
    SecretSpec("tls-cert", "ERLMCP_TLS_CERT_FILE", True, "PEM certificate chain the server presents"),
    SecretSpec("tls-key", "ERLMCP_TLS_KEY_FILE", True, "PEM private key of that certificate"),
    SecretSpec("tls-client-ca", "ERLMCP_TLS_CLIENT_CA_FILE", True, "CAs client certificates must chain to (mTLS)"),
    SecretSpec("redis-url", "ERLMCP_REDIS_URL", False, "redis://:PASSWORD@HOST:6379/0 shared by the replicas"),
    SecretSpec("redis-ca", "ERLMCP_REDIS_CA_FILE", True, "PEM CA of a rediss:// Redis (Memorystore's server CA)"),
    SecretSpec("otel-ca-cert", "OTEL_EXPORTER_OTLP_CERTIFICATE", True, "CA of the OTLP collector (TLS)"),
)


def by_key(key: str) -> SecretSpec:
    """The spec of ``key``; KeyError names the known keys."""
    for spec in SERVER_SECRETS:
        if spec.key == key:
            return spec
    raise KeyError(f"no erlmcp secret {key!r}; known: {', '.join(s.key for s in SERVER_SECRETS)}")
