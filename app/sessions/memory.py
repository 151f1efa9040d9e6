"""The in-memory session store: one process, bounded in count, idle sessions expire."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.sessions.events import KEEP_FINISHED_SECONDS, MAX_FINISHED_STREAMS, EventStream

__all__ = ["Session", "SessionLimitError", "SessionQuotaError", "SessionStore", "StandaloneStream"]


class StandaloneStream(Protocol):
    """A session's standalone stream (its GET stream) as the protocol layer runs it: the stream, and what feeds it
    (:class:`app.protocol.streams.Standalone`). The session holds it so that the stream stops when the session
    ends, however it ends (DELETE, idle expiry, ended on another replica)."""

    @property
    def stream(self) -> EventStream: ...

    async def end(self) -> None:
        """No more events: the stream ends for its readers, and stays resumable a while for what it kept."""
        ...

    def stop(self) -> None:
        """:meth:`end`, from code that cannot wait for it (the session ended)."""
        ...


class SessionLimitError(RuntimeError):
    """The store holds as many sessions as it may."""


class SessionQuotaError(SessionLimitError):
    """One client (``owner``) already holds as many sessions as one client may (``limit``)."""

    def __init__(self, limit: int, owner: str) -> None:
        super().__init__(
            f"this client already holds {limit} sessions, the most allowed per client "
            "(ERLMCP_MAX_SESSIONS_PER_PRINCIPAL); end one (DELETE /mcp, or close its connection) or let one expire"
        )
        self.limit = limit
        self.owner = owner


@dataclass(eq=False)
class Session:
    """What one client negotiated, and the state the protocol keeps for it."""

    id: str
    protocol_version: str
    client_info: dict[str, Any]
    client_capabilities: dict[str, Any]
    principal: str | None
    last_seen: float
    # Whose per-client session quota the session counts against (None: no one's).
    owner: str | None = None
    initialized: bool = False
    log_level: str | None = None
    subscriptions: set[str] = field(default_factory=set)
    # Server-to-client requests waiting for the client's response, by request id.
    pending: dict[str | int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    # Client requests being handled, by request id, so notifications/cancelled can stop them.
    in_flight: dict[str | int, asyncio.Task[Any]] = field(default_factory=dict)
    streams: dict[str, EventStream] = field(default_factory=dict)
    standalone: StandaloneStream | None = None  # on the process that runs it (with Redis, one replica)
    _next_request: int = 0

    def next_request_id(self) -> str:
        """A fresh id for a server-to-client request."""
        self._next_request += 1
        return f"srv-{self._next_request}"

    def on_notification(self, method: str, params: dict[str, Any]) -> None:
        """Apply a client notification: ``initialized`` marks the session ready, ``cancelled`` stops a request."""
        if method == "notifications/initialized":
            self.initialized = True
        elif method == "notifications/cancelled":
            request_id = params.get("requestId")
            task = self.in_flight.get(request_id) if isinstance(request_id, str | int) else None
            if task is not None:
                task.cancel()  # the handler stops, and no response is sent (the client asked not to get one)

    def on_response(self, request_id: str | int | None, payload: dict[str, Any]) -> bool:
        """Hand the client's response to the server request waiting for it; whether one was waiting."""
        future = self.pending.get(request_id) if request_id is not None else None
        if future is None or future.done():
            return False
        future.set_result(payload)
        return True

    def keep_finished(self, stream: EventStream, *, seconds: float, most: int) -> list[EventStream]:
        """Keep a finished stream resumable for ``seconds`` (then forget it), among the ``most`` latest finished
        streams: the older ones are forgotten now, and returned for the store to release what else holds them."""
        if self.streams.get(stream.id) is stream:
            asyncio.get_running_loop().call_later(seconds, self.forget, stream)
        finished = [kept for kept in self.streams.values() if kept.closed]  # oldest first
        older = finished[: max(0, len(finished) - most)]
        for old in older:
            del self.streams[old.id]
        return older

    def forget(self, stream: EventStream) -> None:
        """Stop keeping a stream for resumption."""
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]

    def close(self) -> None:
        """Stop everything the session runs: in-flight requests, waits for the client, and its standalone stream."""
        for task in self.in_flight.values():
            task.cancel()
        for future in self.pending.values():
            future.cancel()
        if self.standalone is not None:
            self.standalone.stop()


class SessionStore:
    """Sessions of one process, by id. Ids are 128-bit random, visible ASCII, as the transport specification asks.

    Every method that another backend may need the network for is a coroutine, so that the Redis backend
    (``app.sessions.redis``) can stand in for this one.
    """

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_seconds: float,
        max_sessions_per_owner: int = 0,
        clock: Callable[[], float] = time.monotonic,
        keep_finished_seconds: float = KEEP_FINISHED_SECONDS,
        max_finished_streams: int = MAX_FINISHED_STREAMS,
    ) -> None:
        self._sessions: dict[str, Session] = {}
        self._keep_finished = keep_finished_seconds
        self._max_finished = max_finished_streams
        self._max = max_sessions
        self._per_owner = max_sessions_per_owner  # 0: no quota
        self._owned: dict[str, set[str]] = {}  # owner -> ids of its live sessions
        self._idle = idle_seconds
        self._clock = clock
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def keep_finished_seconds(self) -> float:
        """How long a finished stream stays resumable, and a standalone stream goes on without a reader."""
        return self._keep_finished

    async def create(
        self,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        client_capabilities: dict[str, Any],
        principal: str | None,
        owner: str | None = None,
        quota: int | None = None,
    ) -> Session:
        """A new session, counted against the quota of ``owner`` (default: the principal; none when both are None):
        ``quota`` sessions (the owner's own; default: ``max_sessions_per_owner``; 0: no quota).

        Raises:
            SessionQuotaError: the owner already holds ``quota`` live sessions.
            SessionLimitError: the store is full even after expiring idle sessions.
        """
        owner = principal if owner is None else owner
        limit = self._per_owner if quota is None else quota
        # Sweeping is O(sessions): at most once a second, or when the store is full.
        if len(self._sessions) >= self._max or self._clock() - self._swept >= 1.0:
            self._expire()
        if len(self._sessions) >= self._max:
            raise SessionLimitError(f"the server holds its maximum of {self._max} sessions; try again later")
        if owner is not None and limit:
            self._check_quota(owner, limit)
        session = Session(
            id=secrets.token_urlsafe(16),
            protocol_version=protocol_version,
            client_info=client_info,
            client_capabilities=client_capabilities,
            principal=principal,
            last_seen=self._clock(),
            owner=owner,
        )
        self._sessions[session.id] = session
        if owner is not None:  # (counted with or without a quota now: an owner's quota may be set later)
            self._owned.setdefault(owner, set()).add(session.id)
        return session

    def _check_quota(self, owner: str, quota: int) -> None:
        held = self._owned.get(owner, ())
        if len(held) < quota:
            return
        now = self._clock()  # the owner's idle sessions may not have been swept yet: they no longer count
        for session_id in [sid for sid in held if self._idle_past(self._sessions[sid], now)]:
            self._drop(session_id)
        if len(self._owned.get(owner, ())) >= quota:
            raise SessionQuotaError(quota, owner)

    def _idle_past(self, session: Session, now: float) -> bool:
        """Whether a sweep ends the session: idle longer than the idle time, with no request in flight."""
        return now - session.last_seen > self._idle and not session.in_flight

    async def get(self, session_id: str) -> Session | None:
        """The live session with this id, touched; None when unknown or expired."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > self._idle:
            self._drop(session_id)
            return None
        session.last_seen = now
        return session

    def _drop(self, session_id: str) -> bool:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        owner = session.owner
        if owner is not None and (held := self._owned.get(owner)) is not None:
            held.discard(session_id)
            if not held:
                del self._owned[owner]
        session.close()
        return True

    async def delete(self, session_id: str) -> bool:
        """End a session; whether it existed."""
        return self._drop(session_id)

    async def save(self, session: Session) -> None:
        """Persist what a request changed in the session (nothing to do in memory)."""

    def new_stream(self, session: Session, *, max_events: int | None = None, standalone: bool = False) -> EventStream:
        """A new event stream of the session (a response stream, or its ``standalone`` stream), which keeps its
        latest ``max_events`` events (default: the stream's own bound)."""
        stream = EventStream(standalone=standalone)
        if max_events is not None:
            stream.max_events = max_events
        session.streams[stream.id] = stream
        return stream

    async def find_stream(self, session: Session, stream_id: str) -> EventStream | None:
        """The session's stream with this id, to resume it (None for another session's stream, as for none)."""
        return session.streams.get(stream_id)

    async def finish_stream(self, session: Session, stream: EventStream) -> None:
        """The stream has its last event: it ends, and stays resumable a while (see :meth:`Session.keep_finished`)."""
        if not stream.closed:
            await stream.close()
        session.keep_finished(stream, seconds=self._keep_finished, most=self._max_finished)

    async def drop_stream(self, session: Session, stream: EventStream) -> None:
        """Forget a finished stream now (a GET stream that the session's next GET replaces)."""
        session.forget(stream)

    async def adopt(self, session: Session, stream: EventStream) -> bool:
        """Never: every stream of this store is written by this process, which runs as long as the stream."""
        return False

    async def deliver_response(self, session: Session, request_id: str | int | None, payload: dict[str, Any]) -> bool:
        """Hand the client's response to the server request waiting for it."""
        return session.on_response(request_id, payload)

    async def deliver_notification(self, session: Session, method: str, params: dict[str, Any]) -> None:
        """Apply a client notification (initialized, cancelled) to the session."""
        session.on_notification(method, params)

    def expire(self) -> int:
        """End the sessions idle longer than the idle time (none with a request in flight); how many. The server
        calls this every few seconds, so that a client that vanished without DELETE is released even when no
        other traffic comes."""
        return self._expire()

    def _expire(self) -> int:
        now = self._swept = self._clock()
        stale = [sid for sid, s in self._sessions.items() if self._idle_past(s, now)]
        for session_id in stale:
            self._drop(session_id)
        return len(stale)

    def all(self) -> list[Session]:
        """Every live session of this process (for broadcasting and shutdown)."""
        return list(self._sessions.values())

    async def unavailable(self) -> str | None:
        """Never: the sessions live in this process."""
        return None

    async def close(self) -> None:
        """Release the store's resources (the server is stopping)."""
