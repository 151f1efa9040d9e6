"""The 2026-07-28 (stateless) era: every request carries its protocol version, client capabilities and log level
in ``_meta``; from these :meth:`app.protocol.core.ProtocolCore.stateless_context` builds its context, whatever
transport it came over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.jsonrpc import InvalidParams, Message, UnsupportedVersion
from app.protocol.revisions import STATELESS_REVISIONS

__all__ = [
    "META_CAPABILITIES",
    "META_LOG_LEVEL",
    "META_VERSION",
    "check_meta",
    "check_version",
    "is_stateless",
]

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"


def is_stateless(message: Message) -> bool:
    """Whether a message carries the 2026-07-28 ``_meta`` (a protocol version in it) rather than relying on a
    session's handshake."""
    meta = message.params.get("_meta")
    return isinstance(meta, dict) and META_VERSION in meta


def check_meta(message: Message) -> Mapping[str, Any]:
    """The request's ``_meta``, with the keys every 2026-07-28 request must carry.

    Raises:
        InvalidParams: ``_meta`` is missing, not an object, or lacks protocolVersion or clientCapabilities.
    """
    meta = message.params.get("_meta")
    if not isinstance(meta, dict):
        raise InvalidParams(
            'Invalid params: a 2026-07-28 request needs "_meta" with its protocol version and client capabilities',
            request_id=message.id,
        )
    if not isinstance(meta.get(META_VERSION), str):
        raise InvalidParams(f'Invalid params: "_meta" needs "{META_VERSION}"', request_id=message.id)
    if not isinstance(meta.get(META_CAPABILITIES), dict):
        raise InvalidParams(f'Invalid params: "_meta" needs "{META_CAPABILITIES}" (an object)', request_id=message.id)
    return meta


def check_version(meta: Mapping[str, Any]) -> None:
    """Refuse a ``_meta`` protocol version this server does not speak.

    Raises:
        UnsupportedVersion: with the supported versions and the requested one in ``data``.
    """
    if meta[META_VERSION] not in STATELESS_REVISIONS:
        raise UnsupportedVersion(
            f"Unsupported protocol version {meta[META_VERSION]!r}",
            data={"supported": list(STATELESS_REVISIONS), "requested": meta[META_VERSION]},
        )
