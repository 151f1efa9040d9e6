"""Server-sent events framing (the text/event-stream format)."""

from __future__ import annotations

__all__ = ["SSE_HEADERS", "format_event"]

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def format_event(
    event_id: str | None, data: bytes, *, event: str | None = "message", retry_ms: int | None = None
) -> bytes:
    """One SSE event. ``data`` must not contain newlines (JSON from orjson never does)."""
    lines = []
    if event_id is not None:
        lines.append(b"id: " + event_id.encode())
    if retry_ms is not None:
        lines.append(b"retry: " + str(retry_ms).encode())
    if event and data:
        lines.append(b"event: " + event.encode())
    lines.append(b"data: " + data if data else b"data:")
    return b"\n".join(lines) + b"\n\n"
