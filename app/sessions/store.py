"""What the transports need of a session store; the in-memory store and the Redis store both provide it."""

from __future__ import annotations

from typing import Any, Protocol

from app.sessions.events import EventStream
from app.sessions.memory import Session

__all__ = ["SessionBackend", "SessionStoreUnavailable"]


class SessionStoreUnavailable(RuntimeError):
    """The shared session store (Redis) does not answer: the request failed fast and may be retried shortly."""

    retry_after = 1  # seconds: the store is checked about this often, so a retry then has a chance


class SessionBackend(Protocol):
    """Sessions by id, their event streams, and delivery of what clients send to the request it concerns."""

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
        """A new session, counted against the per-client quota of ``owner`` (default: the principal; none when both
        are None): ``quota`` sessions, the owner's own (default: the store's; 0: no quota).

        Raises:
            SessionQuotaError: the owner already holds as many live sessions as it may.
            SessionLimitError: the store (or this replica) holds as many sessions as it may.
            SessionStoreUnavailable: a shared store does not answer.
        """
        ...

    async def get(self, session_id: str) -> Session | None: ...

    async def save(self, session: Session) -> None: ...

    async def delete(self, session_id: str) -> bool: ...

    @property
    def keep_finished_seconds(self) -> float:
        """How long a finished stream stays resumable, and a standalone stream goes on without a reader."""
        ...

    def new_stream(self, session: Session, *, max_events: int | None = None, standalone: bool = False) -> EventStream:
        """A new stream of the session, kept for resumption: a call's, or (``standalone``) its GET stream; it keeps
        its latest ``max_events`` events (default: the stream's own bound)."""
        ...

    async def find_stream(self, session: Session, stream_id: str) -> EventStream | None:
        """The stream of this session with this id, to resume it; None when there is none: another session's
        stream (of any principal) is not found either, and the caller cannot tell the two apart.

        Raises:
            SessionStoreUnavailable: a shared store does not answer.
        """
        ...

    async def finish_stream(self, session: Session, stream: EventStream) -> None:
        """The stream has its last event: close it. It stays resumable ``KEEP_FINISHED_SECONDS``, and the session
        keeps at most ``MAX_FINISHED_STREAMS`` finished streams (the latest) (:mod:`app.sessions.events`)."""
        ...

    async def drop_stream(self, session: Session, stream: EventStream) -> None:
        """Forget a finished stream now (a GET stream that the session's next GET replaces)."""
        ...

    async def adopt(self, session: Session, stream: EventStream) -> bool:
        """Whether this process now writes ``stream``, a standalone stream of the session found (:meth:`find_stream`)
        and not finished, whose writer is gone (a replica that died or stopped): its events are numbered on from
        the last one kept. False while its writer lives, and for a stream this process writes already.

        Raises:
            SessionStoreUnavailable: a shared store does not answer.
        """
        ...

    async def deliver_response(
        self, session: Session, request_id: str | int | None, payload: dict[str, Any]
    ) -> bool: ...

    async def deliver_notification(self, session: Session, method: str, params: dict[str, Any]) -> None: ...

    def all(self) -> list[Session]: ...

    def __len__(self) -> int:
        """Sessions this server holds now."""
        ...

    def expire(self) -> int:
        """End the sessions idle past the idle time (this process's part of them); how many."""
        ...

    async def unavailable(self) -> str | None:
        """None while the store can serve requests, else why it cannot (readiness answers 503 then); never raises."""
        ...

    async def close(self) -> None: ...
