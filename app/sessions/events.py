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
# The longest sequence number of an event id: more than a stream numbers (a 64-bit count, as Redis keeps it).
_MAX_SEQUENCE_DIGITS = 19


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event: its id and its data (a JSON-RPC message, or empty for the priming event)."""

    id: str
    data: bytes


def parse_event_id(event_id: str) -> tuple[str, int] | None:
    """``(stream id, sequence)`` from an event id, or None when it is not one of ours: the sequence is ASCII digits,
    at most ``_MAX_SEQUENCE_DIGITS`` of them (``str.isdigit`` alone takes superscripts and other scripts' digits,
    some of which ``int`` refuses, and ``int`` refuses a string of thousands of digits: ``Last-Event-ID`` is the
    client's to write)."""
    stream_id, _, sequence = event_id.rpartition("-")
    if not stream_id or len(sequence) > _MAX_SEQUENCE_DIGITS or not (sequence.isascii() and sequence.isdigit()):
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
    long it has gone without a reader (:meth:`unread_for`), so that whoever runs it can stop it in time. One
    connection reads it at a time, the one that took it over last (:meth:`take_over`): each reader follows it
    with the generation it took it over at, and ends once a later one took it over."""

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

    async def disconnect(self) -> int:
        """End the connections now reading the stream, once they have what was appended so far; the generation the
        stream is at from now (what a reader that takes the stream over follows it with: :meth:`take_over`)."""
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
            return self._generation  # (this call's: another one may bump it before the caller runs again)

    async def take_over(self) -> int:
        """Make a connection about to read the stream its one reader: the connections reading it now end, once they
        have what was appended so far, and the stream counts as read from now (the connection attaches when it
        starts to read: :meth:`attach`). A client resumes when it lost its connection, and the server may not have
        seen that connection go (a proxy cut it): a message must reach one connection only, the live one. Returns
        the reader's generation, to :meth:`follow` the stream with: of two connections that take it over, however
        their steps interleave, the earlier ends and the later reads."""
        self._unread_since = time.monotonic()
        return await self.disconnect()

    async def attach(self, generation: int | None = None) -> int:
        """Count a connection about to follow the stream as a reader, taking the stream over for it unless it did
        already (``generation``: what :meth:`take_over` returned); the reader's generation (see :meth:`take_over`).
        The connection detaches (:meth:`detach`) when it ends."""
        self.readers += 1  # (first: a request that checks for readers meanwhile sees this one)
        return await self.take_over() if generation is None else generation

    def detach(self) -> None:
        """A connection that attached (:meth:`attach`) ended."""
        self.readers -= 1
        if not self.readers:
            self._unread_since = time.monotonic()

    def unread_here(self) -> float:
        """Seconds the stream has gone without a reader in this process (0 while it has one)."""
        return 0.0 if self.readers else time.monotonic() - self._unread_since

    async def unread_for(self) -> float:
        """Seconds the stream has gone without a reader (0 while it has one)."""
        return self.unread_here()

    async def follow(self, after: int = 0, *, generation: int | None = None) -> AsyncIterator[Event]:
        """The events after sequence ``after``, then new ones as they come, until the stream closes (or
        :meth:`disconnect` ends this reader). A reader that took the stream over follows it with its ``generation``
        (:meth:`take_over`), and ends at once when another took it over since; without one, it follows the
        generation the stream is at when it starts."""
        generation = self._generation if generation is None else generation
        if generation != self._generation:  # a later reader took the stream over before this one began
            return
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
