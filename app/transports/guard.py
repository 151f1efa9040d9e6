"""Slow and oversized clients are cut off at the HTTP layer, before the application sees them.

uvicorn with httptools has no deadline for a request's headers or body and no cap on header size, so a
slowloris client (headers a byte at a time), a stalled body, or a 1 MB header block would hold a connection
and its memory for as long as the client likes. This protocol adds three limits per request: the headers must
arrive within ``header_timeout`` (counted from the connection or the request's first byte), the body within
``body_timeout`` of the headers, and the header block may not exceed ``max_header_bytes`` (answered 431).
Responses, including long event streams, have no deadline, but a client that stops reading them does: when the
transport's buffer is full (asyncio calls ``pause_writing``) and stays full for ``write_timeout`` seconds, the
connection is aborted. A stalled reader then costs the buffer it filled for that long and no more (an event stream
keeps at most its last 1000 events for resumption), and a reader that is merely slow is never cut: each time the
buffer drains, the clock stops.

A response's header block and body leave in one write (:mod:`app.transports.corked`).

The same protocol serves the metrics listener: the kubelet's probes must not be starved by clients that connect
and say nothing. Under TLS the deadlines start once the handshake is done; the handshake has its own deadline, set
where the listener is made (:mod:`app.listeners`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.transports.corked import CorkedTransport

__all__ = ["GuardedHttpToolsProtocol", "guarded_protocol"]

log = structlog.get_logger(__name__)

_REFUSAL = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Request header fields too large"}}'
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: "
    + str(len(_REFUSAL)).encode()
    + b"\r\n\r\n"
    + _REFUSAL
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request deadlines and a header size cap (see the module)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    write_timeout: float = 30.0
    # Told the reason of every connection cut (header_deadline, body_deadline, write_stall): a metric counts them.
    on_cut: Callable[[str], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Each stage only sets a deadline; a ticker per connection, running while a request is being read,
        # compares it with the clock. A busy keep-alive connection costs a tick a second, not timers per request.
        self._ticker: asyncio.TimerHandle | None = None
        self._stage: str | None = None
        self._deadline = 0.0
        self._header_bytes = 0  # of the request being read
        self._write_stall: asyncio.TimerHandle | None = None

    @property
    def _tick(self) -> float:
        return min(1.0, self.header_timeout / 4, self.body_timeout / 4)

    def _arm(self, seconds: float, stage: str) -> None:
        self._stage, self._deadline = stage, self.loop.time() + seconds
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick, self._check)

    def _disarm(self) -> None:
        self._stage = None

    def _check(self) -> None:
        self._ticker = None
        if self._stage is None:
            return  # between requests: the keep-alive timeout of uvicorn applies; the next request re-arms
        if self.loop.time() >= self._deadline:
            self._cut(self._stage)
            return
        self._ticker = self.loop.call_later(self._tick, self._check)

    def _cut(self, stage: str) -> None:
        log.warning("connection cut: the client was too slow", stage=stage, client=str(self.client))
        self._counted("header_deadline" if stage == "headers" else f"{stage}_deadline")
        self._stage = None
        self._uncork()
        if not self.transport.is_closing():
            self.transport.close()

    def _uncork(self) -> None:
        """The current response's held header block first, before anything the protocol writes or closes itself."""
        transport = getattr(self.cycle, "transport", None)
        if isinstance(transport, CorkedTransport):
            transport.flush()

    def _counted(self, reason: str) -> None:
        if self.on_cut is not None:
            self.on_cut(reason)  # a staticmethod on the configured class: not bound to the protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "headers")

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_stall is None:
            self._write_stall = self.loop.call_later(self.write_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None

    def _stalled(self) -> None:
        self._write_stall = None
        log.warning("connection cut: the client stopped reading", seconds=self.write_timeout, client=str(self.client))
        self._counted("write_stall")
        self.transport.abort()  # close() would wait to flush a buffer the client never takes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None
        self._disarm()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        super().connection_lost(exc)

    def _too_large(self) -> None:
        log.warning("request refused: header block too large", client=str(self.client))
        self._disarm()
        self._uncork()
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._arm(self.header_timeout, "headers")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._too_large()

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # refused above: the application never sees this request
            return
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before and self.scope["method"] != "HEAD":  # (not an upgrade; HEAD has no body)
            self.cycle.transport = CorkedTransport(self.transport, self.loop)  # type: ignore[assignment]
        self._arm(self.body_timeout, "body")

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection becomes a WebSocket: its own protocol takes over, with no deadline here
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(
    *,
    header_timeout: float,
    body_timeout: float,
    max_header_bytes: int,
    write_timeout: float = 30.0,
    on_cut: Callable[[str], None] | None = None,
) -> type[HttpToolsProtocol]:
    """The protocol class with these limits (uvicorn takes a class, not an instance); ``on_cut`` is told the
    reason of every connection cut."""
    limits = {"header_timeout": header_timeout, "body_timeout": body_timeout, "max_header_bytes": max_header_bytes}
    extra = {"write_timeout": write_timeout, "on_cut": staticmethod(on_cut) if on_cut is not None else None}
    return type("ConfiguredGuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits | extra)
