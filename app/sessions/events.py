"""SSE event streams with replay: each event gets an id naming its stream, so a client can resume a stream."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["KEEP_FINISHED_SECONDS", "MAX_FINISHED_STREAMS", "Event", "EventStream", "parse_event_id"]

# A finished stream (a call's, once its response is sent; a GET stream, once its connection ended) stays resumable
# this long: time for a client whose connection dropped to come back, on any replica. Then it is let go.
KEEP_FINISHED_SECONDS = 60
# A session keeps at most this many finished streams (the latest; an older one is let go at once): more than the
# calls a client runs at once on one session, whose streams are all it may need to resume after a dropped connection.
# With the finished streams' short life this bounds what a session holds, whatever the rate of its calls.
MAX_FINISHED_STREAMS = 32


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: its id and its data (a JSON-RPC message, or empty for the priming event)."""

    id: str
    data: bytes


def parse_event_id(event_id: str) -> tuple[str, int] | None:
    """``(stream id, sequence)`` from an event id, or None when it is not one of ours."""
    stream_id, _, sequence = event_id.rpartition("-")
    if not stream_id or not sequence.isdigit():
        return None
    return stream_id, int(sequence)


@dataclass(eq=False)
class EventStream:
    """The events of one SSE stream, kept so that a reconnecting client can be sent what it missed."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    max_events: int = 1000
    events: list[Event] = field(default_factory=list)
    closed: bool = False
    _sequence: int = 0
    _generation: int = 0  # bumped to end the current readers' connections (the client resumes)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def append(self, data: bytes) -> Event:
        """Add an event and wake the readers."""
        async with self._changed:
            self._sequence += 1
            event = Event(f"{self.id}-{self._sequence}", data)
            self.events.append(event)
            del self.events[: -self.max_events]
            self._changed.notify_all()
            return event

    async def close(self) -> None:
        """No more events will come."""
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def disconnect(self) -> None:
        """End the connections now reading the stream, once they have what was appended so far."""
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """The events after sequence ``after``, then new ones as they come, until the stream closes
        (or :meth:`disconnect` ends this reader)."""
        generation = self._generation
        while True:
            async with self._changed:
                pending = [e for e in self.events if (parse_event_id(e.id) or ("", 0))[1] > after]
                if not pending:
                    if self.closed or self._generation != generation:
                        return
                    await self._changed.wait()
                    continue
            for event in pending:
                yield event
                after = (parse_event_id(event.id) or ("", after))[1]
