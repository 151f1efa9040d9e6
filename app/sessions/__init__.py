"""Sessions of the handshake era: who initialized, what was negotiated, and the streams of each session."""

from app.sessions.events import EventStream
from app.sessions.memory import Session, SessionLimitError, SessionQuotaError, SessionStore

__all__ = ["EventStream", "Session", "SessionLimitError", "SessionQuotaError", "SessionStore"]
