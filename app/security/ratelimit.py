"""Sliding-window request limits per client."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["WindowLimiter"]


class WindowLimiter:
    """At most ``limit`` events per ``window`` seconds for each key; idle keys are forgotten."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str) -> float:
        """0 when the event may happen now (and it is counted), else the seconds until it may."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self._window:
            events.popleft()
        if len(events) >= self._limit:
            return events[0] + self._window - now
        events.append(now)
        if len(self._events) > 10_000:  # bound the memory: drop the keys with nothing in the window
            for stale in [k for k, v in self._events.items() if not v or v[-1] <= now - self._window]:
                del self._events[stale]
        return 0.0
