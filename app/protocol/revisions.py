"""The MCP revisions this server speaks and how a version is chosen."""

from __future__ import annotations

__all__ = ["HANDSHAKE_REVISIONS", "LATEST_HANDSHAKE_REVISION", "STATELESS_REVISIONS", "negotiate"]

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
