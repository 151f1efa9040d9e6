"""Sessions and event streams in Redis, so that every replica of a deployment serves every session.

- A session's record (negotiated revision, client capabilities, principal, log level, subscriptions) is a Redis
  key that expires after the idle timeout; each replica keeps a local ``Session`` for what cannot travel
  (requests in flight, futures waiting for the client).
- A response or GET stream is a Redis stream: the replica running the request appends, and any replica can
  replay it from ``Last-Event-ID`` and follow it to its end.
- What a client sends for a request running on another replica (its answer to a server request, a
  cancellation) goes to that replica over a pub/sub channel.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from app.sessions.events import Event, EventStream
from app.sessions.memory import Session, SessionLimitError

__all__ = ["RedisEventStream", "RedisSessionStore"]

log = structlog.get_logger(__name__)

_CLOSED = b"-1"  # the sequence number of the end-of-stream marker


def _entries(reply: Any) -> list[tuple[Any, dict[bytes, bytes]]]:
    """The entries of the one stream in an XREAD reply (a RESP2 list, or a RESP3 mapping)."""
    if not reply:
        return []
    items = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    if items and isinstance(items[0], list) and len(items) == 1 and isinstance(items[0][0], list):
        items = items[0]  # RESP3 wraps the entries once more
    return [(entry_id, fields) for entry_id, fields in items]


class RedisEventStream(EventStream):
    """An event stream kept in a Redis stream."""

    def __init__(self, redis: Redis, stream_id: str, *, prefix: str, ttl_seconds: int) -> None:
        super().__init__(id=stream_id)
        self._redis = redis
        self._key = f"{prefix}:events:{stream_id}"
        self._ttl = ttl_seconds

    async def append(self, data: bytes) -> Event:
        """Add an event (only the replica running the request writes)."""
        self._sequence += 1
        event = Event(f"{self.id}-{self._sequence}", data)
        await self._redis.xadd(self._key, {"seq": str(self._sequence), "data": data}, maxlen=self.max_events)
        await self._redis.expire(self._key, self._ttl)
        return event

    async def close(self) -> None:
        """Mark the end, for readers on any replica."""
        self.closed = True
        await self._redis.xadd(self._key, {"seq": _CLOSED, "data": b""}, maxlen=self.max_events)
        await self._redis.expire(self._key, self._ttl)

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """The events after sequence ``after``, then new ones as they are appended anywhere, until the end marker
        (or :meth:`disconnect` ends this reader, or the stream expires)."""
        generation = self._generation
        position = "0-0"
        while self._generation == generation:
            reply: Any = await self._redis.xread({self._key: position}, count=100, block=100)
            entries = _entries(reply)
            if not entries:
                if not await self._redis.exists(self._key):
                    return
                continue
            for entry_id, fields in entries:
                position = entry_id
                sequence = fields[b"seq"]
                if sequence == _CLOSED:
                    return
                if int(sequence) > after:
                    yield Event(f"{self.id}-{int(sequence)}", fields[b"data"])
                    after = int(sequence)
                if self._generation != generation:
                    return


class RedisSessionStore:
    """The session backend for more than one replica."""

    def __init__(
        self,
        redis: Redis,
        *,
        max_sessions: int,
        idle_seconds: float,
        prefix: str = "erlmcp",
    ) -> None:
        self._redis = redis
        self._max = max_sessions
        self._idle = max(1, int(idle_seconds))
        self._prefix = prefix
        self._local: dict[str, tuple[Session, float]] = {}
        self._bus: asyncio.Task[None] | None = None
        self._channel = f"{prefix}:bus"

    @property
    def redis(self) -> Redis:
        """The Redis client this store uses (other shared state, such as rate limits, uses it too)."""
        return self._redis

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:session:{session_id}"

    @staticmethod
    def _record(session: Session) -> bytes:
        return orjson.dumps({
            "protocol_version": session.protocol_version,
            "client_info": session.client_info,
            "client_capabilities": session.client_capabilities,
            "principal": session.principal,
            "initialized": session.initialized,
            "log_level": session.log_level,
            "subscriptions": sorted(session.subscriptions),
        })  # fmt: skip

    async def _ensure_bus(self) -> None:
        if self._bus is None:
            pubsub = self._redis.pubsub()
            await pubsub.subscribe(self._channel)
            self._bus = asyncio.get_running_loop().create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        async for item in pubsub.listen():
            if item.get("type") != "message":
                continue
            try:
                message = orjson.loads(item["data"])
                entry = self._local.get(message["session"])
                if entry is None:
                    continue
                session = entry[0]
                if message["type"] == "response":
                    session.on_response(message["id"], message["payload"])
                elif message["type"] == "notification":
                    session.on_notification(message["method"], message["params"])
                elif message["type"] == "deleted":
                    self._local.pop(message["session"], None)
                    session.close()
            except (ValueError, KeyError, TypeError):
                log.warning("ignored a malformed message on the session bus")

    async def _publish(self, message: dict[str, Any]) -> None:
        await self._redis.publish(self._channel, orjson.dumps(message))

    def _prune(self) -> None:
        now = time.monotonic()
        for session_id in [
            sid for sid, (s, seen) in self._local.items() if now - seen > self._idle and not s.in_flight
        ]:
            self._local.pop(session_id)[0].close()

    async def create(
        self,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        client_capabilities: dict[str, Any],
        principal: str | None,
    ) -> Session:
        """A new session, visible to every replica.

        Raises:
            SessionLimitError: this replica holds as many sessions as it may.
        """
        await self._ensure_bus()
        self._prune()
        if len(self._local) >= self._max:
            raise SessionLimitError(f"this replica holds its maximum of {self._max} sessions; try again later")
        session = Session(
            id=secrets.token_urlsafe(16),
            protocol_version=protocol_version,
            client_info=client_info,
            client_capabilities=client_capabilities,
            principal=principal,
            last_seen=time.monotonic(),
        )
        await self._redis.set(self._key(session.id), self._record(session), ex=self._idle)
        self._local[session.id] = (session, time.monotonic())
        return session

    async def get(self, session_id: str) -> Session | None:
        """The session, from this replica's copy refreshed from Redis; None when unknown, ended or expired."""
        await self._ensure_bus()
        key = self._key(session_id)
        raw = await self._redis.get(key)
        if raw is None:
            entry = self._local.pop(session_id, None)
            if entry is not None:
                entry[0].close()
            return None
        await self._redis.expire(key, self._idle)
        record = orjson.loads(raw)
        entry = self._local.get(session_id)
        session = entry[0] if entry else Session(
            id=session_id,
            protocol_version=record["protocol_version"],
            client_info=record["client_info"],
            client_capabilities=record["client_capabilities"],
            principal=record["principal"],
            last_seen=time.monotonic(),
        )  # fmt: skip
        session.initialized = record["initialized"]
        session.log_level = record["log_level"]
        session.subscriptions = set(record["subscriptions"])
        self._local[session_id] = (session, time.monotonic())
        return session

    async def save(self, session: Session) -> None:
        """Write back what a request changed; a session ended meanwhile stays ended (``XX``)."""
        await self._redis.set(self._key(session.id), self._record(session), ex=self._idle, xx=True)

    async def delete(self, session_id: str) -> bool:
        """End the session on every replica."""
        existed = bool(await self._redis.delete(self._key(session_id)))
        entry = self._local.pop(session_id, None)
        if entry is not None:
            entry[0].close()
        await self._publish({"type": "deleted", "session": session_id})
        return existed or entry is not None

    def new_stream(self, session: Session) -> EventStream:
        """A stream kept in Redis, so that another replica can resume it."""
        stream = RedisEventStream(self._redis, secrets.token_hex(8), prefix=self._prefix, ttl_seconds=self._idle)
        session.streams[stream.id] = stream
        return stream

    async def find_stream(self, session: Session, stream_id: str) -> EventStream | None:
        """A stream of the session, written here or on another replica."""
        local = session.streams.get(stream_id)
        if local is not None:
            return local
        if not all(c in "0123456789abcdef" for c in stream_id):
            return None
        if not await self._redis.exists(f"{self._prefix}:events:{stream_id}"):
            return None
        return RedisEventStream(self._redis, stream_id, prefix=self._prefix, ttl_seconds=self._idle)

    async def deliver_response(self, session: Session, request_id: str | int | None, payload: dict[str, Any]) -> bool:
        """Hand the answer to the waiting request here, or to the replica that runs it."""
        if session.on_response(request_id, payload):
            return True
        await self._publish({"type": "response", "session": session.id, "id": request_id, "payload": payload})
        return True

    async def deliver_notification(self, session: Session, method: str, params: dict[str, Any]) -> None:
        """Apply a notification here, and (cancellations) on the replica that runs the request."""
        session.on_notification(method, params)
        if method == "notifications/cancelled" and params.get("requestId") not in session.in_flight:
            await self._publish({"type": "notification", "session": session.id, "method": method, "params": params})

    def __len__(self) -> int:
        """Sessions this replica holds (others hold theirs; the shared state is in Redis)."""
        return len(self._local)

    def all(self) -> list[Session]:
        """The sessions this replica holds a copy of."""
        return [session for session, _ in self._local.values()]

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._bus is not None:
            self._bus.cancel()
        await self._redis.aclose()
