"""Resumable event streams of the handshake era: what a request sends while it runs, and a session's standalone
stream of server-initiated messages. Each event is kept in the session's :class:`~app.sessions.EventStream`, so a
client that lost its connection resumes from the last event it saw (``Last-Event-ID``), on any replica when the
sessions live in Redis. Transports only frame the events (:func:`app.transports.sse.replay`).
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

_KEEP_FINISHED_SECONDS = 60  # a finished stream stays resumable this long


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
        # Keep the finished stream a while for late resumption, then forget it.
        asyncio.get_running_loop().call_later(_KEEP_FINISHED_SECONDS, session.streams.pop, stream.id, None)
        await stream.close()
        await core.sessions.save(session)


async def open_standalone(core: ProtocolCore, session: Session) -> tuple[EventStream, Callable[[], Awaitable[None]]]:
    """The session's standalone stream (a GET in streamable HTTP): its priming event, then the changes the session
    hears of. Call the returned ``end`` when the client's connection goes."""
    stream = core.sessions.new_stream(session)
    session.standalone = stream
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
        await stream.close()

    return stream, end
