"""Server-sent events framing (the text/event-stream format)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from app.sessions import EventStream

__all__ = ["KEEPALIVE", "SSE_HEADERS", "format_event", "format_retry", "replay", "with_keepalive"]

# A comment line and no blank line: a blank line would end an event, and a parser that keeps the last event id
# across events (httpx-sse, under mcp < 1.23) dispatches that empty event as a message, which its client then fails to
# parse. A comment alone dispatches nothing in any parser, and the next event still parses.
KEEPALIVE = b": keep-alive\n"

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


async def replay(
    stream: EventStream,
    after: int,
    *,
    polling: bool,
    retry_ms: int,
    keepalive_seconds: float,
    stopping: Callable[[], bool],
    generation: int | None = None,
) -> AsyncIterator[bytes]:
    """A resumable stream's events after event ``after``, framed, with keep-alives. A stream of a session that polls
    (:func:`app.protocol.polls`) carries the ``retry`` hint on its priming event (the empty event only such a stream
    has), and ends with it when the server ends the stream on purpose (``stopping()`` once it ended): the client
    comes back, to another replica, with Last-Event-ID. Older clients would not, so they get neither. A reader that
    took the stream over (``generation``, :meth:`~app.sessions.EventStream.take_over`) ends once another does."""

    async def framed() -> AsyncIterator[bytes]:
        async for event in stream.follow(after, generation=generation):
            if not event.data:
                yield format_event(event.id, b"", event=None, retry_ms=retry_ms if polling else None)
            else:
                yield format_event(event.id, event.data)

    async for chunk in with_keepalive(framed(), keepalive_seconds):
        yield chunk
    if polling and stopping():
        yield format_retry(retry_ms)
