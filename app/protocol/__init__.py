"""MCP protocol rules: revisions, the lifecycle, and dispatch by method."""

from app.protocol.revisions import HANDSHAKE_REVISIONS, LATEST_HANDSHAKE_REVISION, negotiate, polls

__all__ = ["HANDSHAKE_REVISIONS", "LATEST_HANDSHAKE_REVISION", "negotiate", "polls"]
