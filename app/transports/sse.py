"""Server-sent events framing (the text/event-stream format)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

__all__ = ["KEEPALIVE", "SSE_HEADERS", "format_event", "with_keepalive"]

KEEPALIVE = b": keep-alive\n\n"

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


def format_retry(retry_ms: int) -> bytes:
    """A field-only event that sets how long the client waits before reconnecting: the last thing a stream the
    server ends on purpose (shutdown) sends, so that its client comes back (to another replica) with Last-Event-ID."""
    return b"retry: " + str(retry_ms).encode() + b"\n\n"


async def with_keepalive(events: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """The events, with a ``: keep-alive`` comment whenever ``interval`` seconds pass without one, so that
    proxies and load balancers do not close a quiet stream."""
    iterator = aiter(events)
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield KEEPALIVE
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
