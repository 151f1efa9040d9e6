"""Request limits per client: a sliding window (initialize) and token buckets (every request), in this
process or in Redis."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis

__all__ = ["RateLimiter", "RedisTokenBuckets", "TokenBuckets", "WindowLimiter"]


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


class RateLimiter(Protocol):
    """A request budget per client: ``take`` answers 0 (go ahead) or the seconds to wait."""

    async def take(self, key: str, cost: int = 1) -> float:
        """Take ``cost`` tokens (one per request: a JSON-RPC batch costs one per item) from ``key``'s bucket, all
        at once or none: 0 when taken, else the seconds until ``cost`` tokens will be there; ``math.inf`` when
        ``cost`` is over the burst (it can never be taken).

        Raises:
            ValueError: ``cost`` is negative.
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
        self._rate, self._burst, self._clock = rate, float(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    async def take(self, key: str, cost: int = 1) -> float:
        """See :meth:`RateLimiter.take`."""
        if _checked(cost) > self._burst:
            return math.inf  # never: nothing is taken, the bucket is as it was
        now = self._clock()
        tokens, then = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self._rate
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > 10_000:
            full = self._burst / self._rate
            for stale in [k for k, (_, when) in self._buckets.items() if now - when >= full]:
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
        self._script = client.register_script(_BUCKET_SCRIPT)
        self._rate, self._burst, self._prefix = rate, burst, prefix

    async def take(self, key: str, cost: int = 1) -> float:
        """See :meth:`RateLimiter.take` (one atomic script: two replicas cannot take the same tokens)."""
        if _checked(cost) > self._burst:
            return math.inf  # never; no need to ask Redis, and the bucket is left as it was
        wait = await self._script(keys=[self._prefix + key], args=[self._rate, self._burst, cost])
        return float(wait)
