"""SSE event streams with replay: each event gets an id naming its stream, so a client can resume a stream."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

__all__ = ["KEEP_FINISHED_SECONDS", "MAX_FINISHED_STREAMS", "Event", "EventStream", "parse_event_id"]

log = structlog.get_logger(__name__)

# A finished stream (a call's, once its response is sent; a GET stream, once it stopped) stays resumable this long:
# time for a client whose connection dropped to come back, on any replica. Then it is let go. A session's GET stream
# goes on this long without a reader before it stops (the client did not come back).
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


def note_gap(stream_id: str, after: int, first: int) -> None:
    """A reader resumed after event ``after`` and the first event the stream still holds is ``first``: the ones
    between were let go (the stream keeps its latest events only). The reader gets what is kept."""
    if after and first > after + 1:
        log.info("a stream was resumed from an event older than it keeps", stream=stream_id, after=after, oldest=first)


@dataclass(eq=False)
class EventStream:
    """The events of one SSE stream, kept so that a reconnecting client can be sent what it missed.

    A session's standalone stream (``standalone``: its GET stream in streamable HTTP) outlives the connections that
    read it: a connection attaches (:meth:`attach`) to read it, and detaches when it ends; the stream knows how
    long it has gone without a reader (:meth:`unread_for`), so that whoever runs it can stop it in time."""

    id: str = field(default_factory=lambda: secrets.token_hex(8))
    max_events: int = 1000
    events: list[Event] = field(default_factory=list)
    closed: bool = False
    standalone: bool = False
    readers: int = 0  # connections of this process reading the stream (attached)
    superseded: bool = False  # another process writes the stream now (it adopted it): this one appends no more
    _sequence: int = 0
    _generation: int = 0  # bumped to end the current readers' connections (the client resumes)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _unread_since: float = field(default_factory=time.monotonic)

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

    async def attach(self) -> None:
        """Count a connection about to follow the stream as its one reader: the connections reading it now end, once
        they have what was appended so far. A client resumes when it lost its connection, and the server may not
        have seen that connection go (a proxy cut it): a message must reach one connection only, the live one."""
        self.readers += 1  # (first: a request that checks for readers meanwhile sees this one)
        await self.disconnect()

    def detach(self) -> None:
        """A connection that attached (:meth:`attach`) ended."""
        self.readers -= 1
        if not self.readers:
            self._unread_since = time.monotonic()

    async def unread_for(self) -> float:
        """Seconds the stream has gone without a reader (0 while it has one)."""
        return 0.0 if self.readers else time.monotonic() - self._unread_since

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """The events after sequence ``after``, then new ones as they come, until the stream closes
        (or :meth:`disconnect` ends this reader)."""
        generation = self._generation
        resumed = after
        while True:
            async with self._changed:
                pending = [e for e in self.events if (parse_event_id(e.id) or ("", 0))[1] > after]
                if not pending:
                    if self.closed or self._generation != generation:
                        return
                    await self._changed.wait()
                    continue
            if resumed:
                note_gap(self.id, resumed, (parse_event_id(pending[0].id) or ("", 0))[1])
                resumed = 0
            for event in pending:
                yield event
                after = (parse_event_id(event.id) or ("", after))[1]
