"""Running an asyncio scenario from a synchronous test, and waiting in one until something holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    """Run ``scenario`` in an event loop of its own, within ``timeout`` seconds: a hang fails the test instead of
    stalling the run."""
    return asyncio.run(asyncio.wait_for(scenario(), timeout))


async def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Whether ``condition`` comes to hold within ``timeout`` seconds (it is checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
