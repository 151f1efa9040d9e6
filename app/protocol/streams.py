"""Resumable event streams of the handshake era: what a request sends while it runs, and a session's standalone
stream of server-initiated messages. Each event is kept in the session's :class:`~app.sessions.EventStream`, so a
client that lost its connection resumes from the last event it saw (``Last-Event-ID``), on any replica when the
sessions live in Redis. Transports only frame the events (:func:`app.transports.sse.replay`).

A session's standalone stream (:class:`Standalone`) belongs to the session, not to a connection: it collects the
changes the session hears of whether or not a client reads it, so that a client that comes back (``Last-Event-ID``)
gets what it missed and reads on. It stops once nobody has read it for ``KEEP_FINISHED_SECONDS`` (the session store's
``keep_finished_seconds``), or when the session ends; a client that comes back later gets what it kept, then reads
on from a new stream of the session (:func:`carry_on_standalone`). One connection reads it at a time: a resume takes
it over from the connection reading it (:meth:`~app.sessions.EventStream.take_over`).

What a session keeps is bounded: a finished stream stays resumable a short while, among the session's latest
finished streams (the session store's ``finish_stream``); a session keeps one GET stream, its latest (opening a new
one lets the previous one go), and that stream keeps its latest ``STANDALONE_MAX_EVENTS`` events.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from app.protocol import polls
from app.protocol.core import ProtocolCore
from app.protocol.dispatcher import Outcome
from app.sessions import EventStream, Session

__all__ = ["STANDALONE_MAX_EVENTS", "Standalone", "carry", "carry_on_standalone", "open_standalone"]

# The events a standalone stream keeps for a client that comes back: list changes and resource updates are small,
# and a list change only says "ask again", so the latest hundred tell a client all it needs.
STANDALONE_MAX_EVENTS = 100
# A stream counts as unread for its whole time to come back once this close to it (timers are not exact).
_SLACK_SECONDS = 0.05
_finishing: set[asyncio.Task[None]] = set()  # standalone streams ending in the background (strong references)


async def carry(
    core: ProtocolCore,
    session: Session,
    stream: EventStream,
    outbox: asyncio.Queue[dict[str, Any] | None],
    task: asyncio.Task[Outcome],
    *,
    transport: str,
    priming: bool,
) -> None:
    """Move a request's messages onto its stream (None in ``outbox``: end the client's connection, which resumes),
    the response last; the stream outlives a disconnect. With ``priming`` (a session that polls) the stream opens
    with an empty event: an id to resume from before any message is sent."""
    try:
        if priming:
            await stream.append(b"")
        while not (task.done() and outbox.empty()):
            getter = asyncio.create_task(outbox.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
            elif (message := getter.result()) is None:
                await stream.disconnect()
            else:
                await stream.append(orjson.dumps(message))
        try:
            outcome = task.result()
        except asyncio.CancelledError:
            core.metrics.mcp_cancellations.labels(transport=transport).inc()
            return
        await stream.append(orjson.dumps(outcome.response))
    finally:
        await core.sessions.finish_stream(session, stream)  # resumable a while yet, then forgotten
        await core.sessions.save(session)


class Standalone:
    """A session's standalone stream, and what feeds it: a listener of the changes the session hears of, whose pump
    appends each one to the stream whether or not a client reads it. Connections attach to the stream to read it
    (:meth:`~app.sessions.EventStream.attach`); once it has gone unread for the session store's
    ``keep_finished_seconds`` it stops, and stays resumable as long again for what it kept."""

    def __init__(self, core: ProtocolCore, session: Session, stream: EventStream, *, priming: bool) -> None:
        self._core = core
        self._session = session
        self._stream = stream
        self._listener = core.watch(session)  # from now: what comes before the pump runs waits in its queue
        self._pump = asyncio.create_task(self._forward(priming))
        self._check: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(core.sessions.keep_finished_seconds, self._due)
        self._stopped = False

    @property
    def stream(self) -> EventStream:
        return self._stream

    async def _forward(self, priming: bool) -> None:
        if priming:
            await self._stream.append(b"")  # the priming event: an id to resume from, no data
        async for change in self._listener.changes():
            message = {"jsonrpc": "2.0", "method": change.method, "params": change.params}
            await self._stream.append(orjson.dumps(message))
            if self._stream.superseded:  # another process runs it now (with Redis, a replica that adopted it)
                self._halt()
                return

    def _due(self) -> None:
        self._check = asyncio.create_task(self._expire())

    async def _expire(self) -> None:
        """Stop when the stream went unread for its time to come back; else look again when that time is up."""
        keep = self._core.sessions.keep_finished_seconds
        unread = await self._stream.unread_for()
        if self._stopped:
            return
        unread = min(unread, self._stream.unread_here())  # a connection here may have come to read it meanwhile
        if self._stream.superseded:
            self._halt()
        elif unread >= keep - _SLACK_SECONDS:
            await self.end()
        else:
            self._timer = asyncio.get_running_loop().call_later(keep - unread, self._due)

    def _halt(self) -> bool:
        """Stop the feed; whether this call stopped it (it stops once)."""
        if self._stopped:
            return False
        self._stopped = True
        self._core.forget(self._listener)
        self._pump.cancel()
        self._timer.cancel()
        if self._session.standalone is self:
            self._session.standalone = None
        return True

    async def end(self) -> None:
        """No more events: the stream ends for its readers, and stays resumable a while for what it kept."""
        if self._halt():
            await self._core.sessions.finish_stream(self._session, self._stream)

    def stop(self) -> None:
        """:meth:`end`, from code that cannot wait for it (the session is closing)."""
        if self._halt():
            finish = self._core.sessions.finish_stream(self._session, self._stream)
            task = asyncio.get_running_loop().create_task(finish)
            _finishing.add(task)
            task.add_done_callback(_finishing.discard)


async def open_standalone(core: ProtocolCore, session: Session, *, priming: bool) -> Standalone:
    """A new standalone stream of the session (a GET in streamable HTTP): its priming event when ``priming`` (a
    session that polls), then the changes the session hears of. The connection that reads it attaches to it
    (:meth:`~app.sessions.EventStream.attach`). The session's previous standalone stream, which no connection
    should read any more, stops and is let go: a session keeps one."""
    stream = core.sessions.new_stream(session, max_events=STANDALONE_MAX_EVENTS, standalone=True)
    return await _replace(core, session, Standalone(core, session, stream, priming=priming))


async def _replace(core: ProtocolCore, session: Session, standalone: Standalone) -> Standalone:
    """Make ``standalone`` the session's standalone stream; the one it had stops and is let go (a session keeps
    one)."""
    previous, session.standalone = session.standalone, standalone
    if previous is not None:
        await previous.end()
        await core.sessions.drop_stream(session, previous.stream)
    return standalone


async def carry_on_standalone(core: ProtocolCore, session: Session, stream: EventStream) -> EventStream | None:
    """A client resumes ``stream``, one of its session's standalone streams: the stream its connection reads once
    it has what ``stream`` kept after the client's last event. That is ``stream`` itself while it runs; when the
    process that ran it is gone (with Redis, a replica that died or stopped), this one runs it from now on, numbering
    its events on (:meth:`~app.sessions.store.SessionBackend.adopt`), and the session's standalone stream here, if it
    had another, is let go, since the client reads this one.

    When ``stream`` stopped (nobody read it for its time to come back), the client came back too late for what came
    since, but not for what comes next: its connection carries on with a new standalone stream of the session, as a
    GET without ``Last-Event-ID`` would open (its priming event, for a session that polls, gives the client an id
    to resume from). Those are new messages, not a replay of another stream. Else the client would hear of nothing
    more: each resume would replay what the stopped stream kept and end (mcp 1.30 resumes with the same id again and
    again, then gives up once the stream is forgotten and the resume is 404). None (the connection ends after what
    ``stream`` kept) when another connection reads the session's GET stream: as for a GET without
    ``Last-Event-ID``, there is one."""
    running = session.standalone
    if running is not None and running.stream is stream:
        return stream
    if stream.closed:
        if running is not None and running.stream.readers:
            return None
        return (await open_standalone(core, session, priming=polls(session.protocol_version))).stream
    stream.max_events = STANDALONE_MAX_EVENTS
    if await core.sessions.adopt(session, stream):
        await _replace(core, session, Standalone(core, session, stream, priming=False))
    return stream
