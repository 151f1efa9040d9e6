"""Change notifications: what changed (a list, a resource) and who wants to hear of it.

Handlers publish; every live listener whose filter accepts the change gets it: a handshake-era session's GET
stream, or a 2026-07-28 ``subscriptions/listen`` stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Change", "ChangeFeed", "Listener"]


@dataclass(frozen=True, slots=True)
class Change:
    """One notification to send: ``notifications/tools/list_changed``, ``notifications/resources/updated``..."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class Listener:
    """A queue of the changes one subscriber asked for."""

    wants: Callable[[Change], bool]
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)

    async def changes(self) -> AsyncIterator[Change]:
        """The changes as they come, until the feed closes."""
        while (change := await self.queue.get()) is not None:
            yield change


class ChangeFeed:
    """Fans changes out to listeners."""

    def __init__(self) -> None:
        self._listeners: set[Listener] = set()

    def listen(self, wants: Callable[[Change], bool]) -> Listener:
        """A new listener for the changes ``wants`` accepts."""
        listener = Listener(wants)
        self._listeners.add(listener)
        return listener

    def forget(self, listener: Listener) -> None:
        """Stop delivering to a listener."""
        self._listeners.discard(listener)

    async def publish(self, change: Change) -> int:
        """Deliver a change; how many listeners got it."""
        delivered = 0
        for listener in list(self._listeners):
            if listener.wants(change):
                listener.queue.put_nowait(change)
                delivered += 1
        return delivered

    def close(self) -> None:
        """End every listener (the server is stopping)."""
        for listener in list(self._listeners):
            listener.queue.put_nowait(None)
        self._listeners.clear()
