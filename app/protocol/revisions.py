"""The MCP revisions this server speaks and how a version is chosen."""

from __future__ import annotations

__all__ = ["HANDSHAKE_REVISIONS", "LATEST_HANDSHAKE_REVISION", "STATELESS_REVISIONS", "negotiate", "polls"]

# Revisions that open with the initialize handshake, oldest first.
HANDSHAKE_REVISIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_HANDSHAKE_REVISION = HANDSHAKE_REVISIONS[-1]
# Revisions without a handshake: every request carries its version and capabilities in _meta.
STATELESS_REVISIONS = ("2026-07-28",)


def negotiate(requested: object) -> str:
    """The revision to answer ``initialize`` with: the client's when supported, else the latest we speak."""
    if isinstance(requested, str) and requested in HANDSHAKE_REVISIONS:
        return requested
    return LATEST_HANDSHAKE_REVISION


# The revisions whose clients poll SSE streams (SEP-1699, from 2025-11-25): they expect a priming event (an id and
# no data) and reconnect with Last-Event-ID when the server ends a call's stream before its response.
_POLLING = frozenset(HANDSHAKE_REVISIONS[HANDSHAKE_REVISIONS.index("2025-11-25") :])


def polls(version: str) -> bool:
    """Whether a session of ``version`` gets SSE polling: priming events, ``retry`` hints and streams the server
    may end mid-call. Older clients read an empty priming event as a broken message and never reconnect to a stream
    cut mid-call, so the official SDKs send neither to them; nor does 2026-07-28, which has no resumable streams.
    By position in :data:`HANDSHAKE_REVISIONS`, never by string order (an unknown version does not poll)."""
    return version in _POLLING
