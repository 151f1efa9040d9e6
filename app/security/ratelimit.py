"""Request limits per client: a sliding window (initialize) and token buckets (every request), in this
process or in Redis. Each call may carry the client's own limit (an API key's or a token audience's, see
:mod:`app.security.limits`); without one, the limiter's default holds.

The redis client is not imported here: only whoever makes :class:`RedisTokenBuckets` has one (and has loaded it),
and a budget that cannot be read is :class:`LimiterUnavailable`, whatever the limiter."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LimiterUnavailable", "RateLimiter", "RedisTokenBuckets", "TokenBuckets", "WindowLimiter"]


class LimiterUnavailable(Exception):
    """The shared request budget cannot be read now (Redis does not answer); the message says why."""


class WindowLimiter:
    """At most ``limit`` events per ``window`` seconds for each key; idle keys are forgotten."""

    def __init__(self, limit: int, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str, limit: int | None = None) -> float:
        """0 when the event may happen now (and it is counted), else the seconds until it may; ``limit``: this
        key's own limit instead of the default.

        The memory this holds is at most the events allowed in the last window, whatever the limits."""
        now = self._clock()
        limit = self._limit if limit is None else limit
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self._window:
            events.popleft()
        if len(events) >= limit:
            # (a limit lowered while events were in the window: wait until enough of them leave it)
            return events[len(events) - limit] + self._window - now if limit > 0 else self._window
        events.append(now)
        if len(self._events) > 10_000:  # bound the memory: drop the keys with nothing in the window
            for stale in [k for k, v in self._events.items() if not v or v[-1] <= now - self._window]:
                del self._events[stale]
        return 0.0


class RateLimiter(Protocol):
    """A request budget per client: ``take`` answers 0 (go ahead) or the seconds to wait."""

    async def take(self, key: str, cost: int = 1, *, rate: float | None = None, burst: int | None = None) -> float:
        """Take ``cost`` tokens (one per request: a JSON-RPC batch costs one per item) from ``key``'s bucket, all
        at once or none: 0 when taken, else the seconds until ``cost`` tokens will be there; ``math.inf`` when
        ``cost`` is over the burst (it can never be taken). ``rate`` and ``burst``: this client's own, instead of
        the limiter's (a rate of 0 or less: no limit, nothing is taken).

        Raises:
            ValueError: ``cost`` is negative.
            LimiterUnavailable: the budget is kept elsewhere (Redis) and cannot be read now.
        """
        ...


def _checked(cost: int) -> int:
    if cost < 0:
        raise ValueError(f"a rate cost is a number of requests, not {cost}")
    return cost


class TokenBuckets:
    """Token buckets in this process: each client holds up to ``burst`` tokens, refilled at ``rate`` per second;
    a request takes one (a batch one per item). Buckets that have filled up again are forgotten (they hold
    nothing to remember)."""

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, when, seconds to fill up)

    async def take(self, key: str, cost: int = 1, *, rate: float | None = None, burst: int | None = None) -> float:
        """See :meth:`RateLimiter.take`."""
        rate = self._rate if rate is None else rate
        capacity = float(self._burst if burst is None else burst)
        _checked(cost)
        if rate <= 0:
            return 0.0  # no limit for this client
        if cost > capacity:
            return math.inf  # never: nothing is taken, the bucket is as it was
        now = self._clock()
        tokens, then, _ = self._buckets.get(key, (capacity, now, 0.0))
        tokens = min(capacity, tokens + (now - then) * rate)
        full = capacity / rate
        if tokens < cost:
            self._buckets[key] = (tokens, now, full)
            return (cost - tokens) / rate
        self._buckets[key] = (tokens - cost, now, full)
        if len(self._buckets) > 10_000:
            for stale in [k for k, (_, when, fills) in self._buckets.items() if now - when >= fills]:
                del self._buckets[stale]
        return 0.0


# One atomic step of a token bucket in Redis; the time comes from Redis, so every replica shares one clock.
# ARGV: the rate, the burst, the cost (a cost over the burst never gets here).
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisTokenBuckets:
    """The same token buckets in Redis, so that a client's budget holds across every replica."""

    def __init__(self, client: Redis, rate: float, burst: int, *, prefix: str = "erlmcp:rate:") -> None:
        from redis.exceptions import RedisError  # loaded already: the client is redis-py's

        self._script = client.register_script(_BUCKET_SCRIPT)
        self._rate, self._burst, self._prefix = rate, burst, prefix
        self._failures: tuple[type[Exception], ...] = (RedisError, OSError)  # OSError: TimeoutError too

    async def take(self, key: str, cost: int = 1, *, rate: float | None = None, burst: int | None = None) -> float:
        """See :meth:`RateLimiter.take` (one atomic script: two replicas cannot take the same tokens).

        Raises:
            LimiterUnavailable: Redis does not answer (a connection error, a timeout, an error reply).
        """
        rate = self._rate if rate is None else rate
        burst = self._burst if burst is None else burst
        _checked(cost)
        if rate <= 0:
            return 0.0  # no limit for this client: no need to ask Redis
        if cost > burst:
            return math.inf  # never; no need to ask Redis, and the bucket is left as it was
        try:
            wait = await self._script(keys=[self._prefix + key], args=[rate, burst, cost])
        except self._failures as exc:
            raise LimiterUnavailable(str(exc) or type(exc).__name__) from exc
        return float(wait)
