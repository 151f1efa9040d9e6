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

Each HTTP/1.1 request gets :class:`app.transports.cycle.LeanCycle`, uvicorn's request-response cycle with less
work per request (its header block and body leave in one write); the protocol's per-request callbacks below do
what uvicorn's do, with the guard's limits, in one call each instead of the guard's and uvicorn's. The keep-alive
timeout is one timer per connection, checked when it fires (uvicorn arms and cancels one per request).

The same protocol serves the metrics listener: the kubelet's probes must not be starved by clients that connect
and say nothing. Under TLS the deadlines start once the handshake is done; the handshake has its own deadline, set
where the listener is made (:mod:`app.listeners`).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools
import structlog
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.transports.cycle import LeanCycle

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


# Request targets seen, each with its path, raw path and query string (before the root path): clients ask for the
# same few (``/mcp``), so each is parsed and decoded once per process. Bounded in count and length: targets are the
# client's.
_TARGETS: dict[bytes, tuple[str, bytes, bytes]] = {}
_TARGETS_KEPT = 64
_TARGET_KEPT_BYTES = 256


def _target(url: bytes) -> tuple[str, bytes, bytes]:
    """A request target's path (percent-decoded), raw path and query string, as uvicorn's protocol reads them."""
    found = _TARGETS.get(url)
    if found is None:
        parsed_url = httptools.parse_url(url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        found = (path, raw_path, parsed_url.query or b"")
        if len(_TARGETS) < _TARGETS_KEPT and len(url) <= _TARGET_KEPT_BYTES:
            _TARGETS[url] = found
    return found


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
        self._upgrading = False  # the request being read is a WebSocket upgrade: uvicorn's path, no cycle
        self._idle = False  # no request is being read or answered: the keep-alive timeout runs
        self._idle_since = 0.0

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
        if isinstance(self.cycle, LeanCycle):
            self.cycle.flush()

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
        self._idle = False
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def _too_large(self) -> None:
        log.warning("request refused: header block too large", client=str(self.client))
        self._disarm()
        self._uncork()
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    # uvicorn's parser callbacks, each with the guard's part in the same call (see the module).

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self._upgrading = False
        self.headers = []
        self.scope = {  # as uvicorn's
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        self._header_bytes = 0
        self._stage, self._deadline = "headers", self.loop.time() + self.header_timeout  # self._arm, inlined
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick, self._check)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._too_large()

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():  # refused above: the application never sees this request
            return
        # uvicorn's, making a LeanCycle; then the body's deadline.
        parser = self.parser
        scope = self.scope
        http_version = parser.get_http_version()
        scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            self._upgrading = True
            self._arm(self.body_timeout, "body")
            return
        path, raw_path, scope["query_string"] = _target(self.url)
        root_path = self.root_path
        if root_path:
            path, raw_path = root_path + path, root_path.encode("ascii") + raw_path
        scope["path"] = path
        scope["raw_path"] = raw_path
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app
        existing = self.cycle
        self.cycle = cycle = LeanCycle(
            self,
            self.scope,
            self.server_state.default_headers,
            self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(),
        )
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined: queued, started when the one before it is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))
        self._stage, self._deadline = "body", self.loop.time() + self.body_timeout  # self._arm, inlined
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick, self._check)

    def on_body(self, body: bytes) -> None:
        cycle: LeanCycle = self.cycle  # type: ignore[assignment]  # made by on_headers_complete
        if self._upgrading or cycle.response_complete:
            return
        cycle.body = cycle.body + body if cycle.body else body  # type: ignore[assignment]  # bytes, not a bytearray
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.set()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection becomes a WebSocket: its own protocol takes over, with no deadline here
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        self._stage = None  # self._disarm, inlined
        cycle: LeanCycle = self.cycle  # type: ignore[assignment]  # made by on_headers_complete
        if self._upgrading or cycle.response_complete:
            return
        cycle.more_body = False
        cycle.set()

    # Keep-alive: one timer per connection. uvicorn cancels it on every read and arms a new one after every
    # response; here a read or a response only notes the time, and the timer, when it fires, closes the connection
    # if it has been idle for the whole timeout or else waits for the rest of it.

    def _unset_keepalive_if_required(self) -> None:
        self._idle = False

    def data_received(self, data: bytes) -> None:
        self._idle = False  # uvicorn's, with the keep-alive as above
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def send_400_response(self, msg: str) -> None:
        self._uncork()
        super().send_400_response(msg)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if self.config.reset_contextvars:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle = False
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle, self._idle_since = True, self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_check)

    def _keep_alive_check(self) -> None:
        self.timeout_keep_alive_task = None
        if not self._idle:
            return  # a request came: the timer is armed again when it has been answered
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_check)
        else:
            self.timeout_keep_alive_handler()


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
