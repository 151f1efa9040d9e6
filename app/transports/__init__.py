"""Transports: bytes and framing, nothing of MCP methods."""
