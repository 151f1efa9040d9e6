"""Resumable event streams of the handshake era: what a request sends while it runs, and a session's standalone
stream of server-initiated messages. Each event is kept in the session's :class:`~app.sessions.EventStream`, so a
client that lost its connection resumes from the last event it saw (``Last-Event-ID``), on any replica when the
sessions live in Redis. Transports only frame the events (:func:`app.transports.sse.replay`).

What a session keeps is bounded: a finished stream stays resumable a short while, among the session's latest
finished streams (the session store's ``finish_stream``), and a session keeps one GET stream, its latest: opening
a new one lets the previous one go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from app.protocol.core import ProtocolCore
from app.protocol.dispatcher import Outcome
from app.sessions import EventStream, Session

__all__ = ["carry", "open_standalone"]


async def carry(
    core: ProtocolCore,
    session: Session,
    stream: EventStream,
    outbox: asyncio.Queue[dict[str, Any] | None],
    task: asyncio.Task[Outcome],
    *,
    transport: str,
) -> None:
    """Move a request's messages onto its stream (None in ``outbox``: end the client's connection, which resumes),
    the response last; the stream outlives a disconnect."""
    try:
        await stream.append(b"")  # the priming event: an id to resume from, no data
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


async def open_standalone(core: ProtocolCore, session: Session) -> tuple[EventStream, Callable[[], Awaitable[None]]]:
    """The session's standalone stream (a GET in streamable HTTP): its priming event, then the changes the session
    hears of. Call the returned ``end`` when the client's connection goes. The session's previous standalone stream,
    which must have ended, is let go: a session keeps one."""
    previous = session.standalone
    stream = core.sessions.new_stream(session)
    session.standalone = stream  # before any await: a concurrent GET sees this one open
    if previous is not None:
        await core.sessions.drop_stream(session, previous)
    await stream.append(b"")
    listener = core.watch(session)

    async def forward() -> None:
        async for change in listener.changes():
            message = {"jsonrpc": "2.0", "method": change.method, "params": change.params}
            await stream.append(orjson.dumps(message))

    pump = asyncio.create_task(forward())

    async def end() -> None:
        core.forget(listener)
        pump.cancel()
        await core.sessions.finish_stream(session, stream)

    return stream, end
