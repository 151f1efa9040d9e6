"""How many worker restarts each caller's cancellations may cost: a token bucket per principal.

Killing the worker of a cancelled call stops it at once, but the next call must start a fresh worker (tens of
milliseconds of CPU for the interpreter and its imports). Cancelling in a loop would turn that into a way of
burning CPU, so each principal gets ``per_minute`` kills a minute (refilled evenly, at most ``per_minute`` saved
up); past that, the pool lets a cancelled call run on instead (see :class:`app.runtime.pool.WorkerPool`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RestartBudget"]

_MAX_TRACKED = 4096  # principals with a partly spent allowance kept at once; full ones are forgotten first


class RestartBudget:
    """``per_minute`` worker kills per principal (None: anonymous callers, who share one allowance); 0: none."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0:
            raise ValueError(f"per_minute must be 0 or more, not {per_minute}")
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._spent: dict[str | None, tuple[float, float]] = {}  # principal -> (tokens left, when counted)

    def take(self, principal: str | None) -> bool:
        """Spend one kill of ``principal``'s allowance; False when it has none left."""
        if self._capacity == 0:
            return False
        now = self._clock()
        tokens = self._left(principal, now)
        if tokens < 1:
            self._spent[principal] = (tokens, now)
            return False
        if principal not in self._spent and len(self._spent) >= _MAX_TRACKED:
            self._forget_full(now)
        self._spent[principal] = (tokens - 1, now)
        return True

    def _left(self, principal: str | None, now: float) -> float:
        tokens, counted = self._spent.get(principal, (self._capacity, now))
        return min(self._capacity, tokens + (now - counted) * self._rate)

    def _forget_full(self, now: float) -> None:
        """Drop the principals whose allowance has refilled (they are as good as new); if none has, the oldest."""
        full = [p for p in self._spent if self._left(p, now) >= self._capacity]
        for principal in full or [min(self._spent, key=lambda p: self._spent[p][1])]:
            del self._spent[principal]
