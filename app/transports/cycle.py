"""One HTTP/1.1 request's response cycle, uvicorn's with less work per request.

:class:`LeanCycle` is a :class:`uvicorn.protocols.http.httptools_impl.RequestResponseCycle` (the guard protocol,
:mod:`app.transports.guard`, makes one per request instead of uvicorn's) and keeps its behaviour: the same ASGI
messages in the same order, the same header block and default headers (the ``date`` header of the server's
state), keep-alive and ``Connection: close``, HTTP/1.0, HEAD, chunked and Content-Length bodies, ``100 Continue``
before the first ``receive``, reading paused above uvicorn's high-water mark and resumed by ``receive``, and
``http.disconnect`` once the client has gone or the response is complete, and ``run_asgi``'s handling of the
application (an exception before the response started is a 500, after it the connection is closed; copied so that a
close writes the held header block first). ``send_500_response`` is inherited. The default headers are written as
they are: ``date`` (``server_header`` is off in :mod:`app.listeners`, which sets no other); a default
``connection`` or ``content-length`` header (uvicorn's ``headers`` setting) would not be interpreted as uvicorn does.

What it replaces, and why:

- ``asyncio.Event`` per request goes: the cycle is its own ``message_event`` (``set``, ``clear``, ``is_set`` and
  ``wait``, as uvicorn's protocol uses it), a flag and, only while ``receive`` waits, a future. The request's body
  has nearly always arrived before the application asks for it, so nothing waits.
- ``receive`` neither calls the flow control when reading is not paused nor copies the body out of a bytearray:
  the body is the bytes the parser gave (joined if it came in several pieces).
- ``send`` writes the header block of a Content-Length response (not HEAD's) together with its body, in one write:
  what ``app/transports/corked.py`` did around uvicorn's cycle (a transport wrapper, now gone, whose every
  attribute went through ``__getattr__``), without the wrapper and without a callback per response. The wrapper
  wrote a held block at the end of the event loop's turn at the latest; here it waits for the first body message
  (a Content-Length response is of no use to the client before its body; Starlette's responses send it in the
  same step, a ``FileResponse`` after reading its first chunk), or for anything else that writes or closes the
  connection, which writes it first: an application error, the guard's 431 or cut, uvicorn's 400. Nothing the
  protocol writes can overtake it. An event stream's headers (chunked) and a HEAD answer's are written at once.
- Header names and values are checked against uvicorn's patterns once per distinct name or value (an application
  sends a small set of names, and of values most are the same few: a content type, common lengths), not at every
  response; the default headers are checked and joined once per list (the server replaces the list once a second,
  when the date changes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent, HTTPScope
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

__all__ = ["LeanCycle"]

# Header names (as the application sent them) that passed HEADER_RE, each with its lowercase form.
_CHECKED_NAMES: dict[bytes, bytes] = {}
_CHECKED_NAMES_MAX = 256  # an application that makes up names per request gets them checked every time
_CHECKED_VALUES: set[bytes] = set()  # header values that passed HEADER_VALUE_RE
_CHECKED_VALUES_MAX = 1024  # (of at most _CHECKED_VALUE_BYTES each; longer ones are checked every time)
_CHECKED_VALUE_BYTES = 64
_DEFAULTS: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")  # the list of default headers, and its lines


def _default_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The server's default headers as header lines, checked and joined once per list."""
    global _DEFAULTS
    if _DEFAULTS[0] is headers:
        return _DEFAULTS[1]
    lines = []
    for name, value in headers:
        if HEADER_RE.search(name):
            raise RuntimeError("Invalid HTTP header name.")
        if HEADER_VALUE_RE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        lines.append(b"%s: %s\r\n" % (name.lower(), value))
    block = b"".join(lines)
    _DEFAULTS = (headers, block)
    return block


class LeanCycle(RequestResponseCycle):
    """uvicorn's request-response cycle with the changes the module lists."""

    def __init__(
        self,
        protocol: HttpToolsProtocol,
        scope: HTTPScope,
        default_headers: list[tuple[bytes, bytes]],
        expect_100_continue: bool,
        keep_alive: bool,
    ) -> None:
        # Not RequestResponseCycle.__init__: it takes an asyncio.Event. The same attributes, which uvicorn's
        # protocol reads and writes (disconnected, keep_alive, body, more_body, response_complete, message_event),
        # taken from the protocol as uvicorn's protocol passes them.
        self.scope = scope
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.logger = protocol.logger
        self.access_logger = protocol.access_logger
        self.access_log = protocol.access_log
        self.default_headers = default_headers
        self._loop = protocol.loop
        self._ready = False
        self._waiter: asyncio.Future[None] | None = None
        self.on_response = protocol.on_response_complete
        self.disconnected = False
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.body = b""  # type: ignore[assignment]  # bytes, not a bytearray: handed to the application as it is
        self.more_body = True
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0
        self._held: bytes | None = None  # a Content-Length response's header block, waiting for its body

    # The message event: what uvicorn's protocol and cycle use of asyncio.Event. A property, not an attribute
    # holding the cycle itself: that would be a reference cycle, left to the garbage collector.

    @property
    def message_event(self) -> LeanCycle:  # type: ignore[override]
        return self

    def set(self) -> None:
        self._ready = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._ready = False

    def is_set(self) -> bool:
        return self._ready

    async def wait(self) -> bool:
        if not self._ready:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return True

    def flush(self) -> None:
        """Write the held header block now (nothing when none is held, or when the connection is closing)."""
        held = self._held
        if held is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def _write(self, data: bytes) -> None:
        """Write ``data`` on the connection after the held header block, if any, in one write."""
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        self.transport.write(data)

    def _close(self) -> None:
        self.flush()
        self.transport.close()

    async def run_asgi(self, app: Any) -> None:
        """uvicorn's, but a close writes the held header block first."""
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self._close()
        else:
            if result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self._close()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self._close()
        finally:
            self.on_response = _nothing

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            status_code = message["status"]
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )
            defaults = self.default_headers
            content = [STATUS_LINE[status_code], _DEFAULTS[1] if _DEFAULTS[0] is defaults else _default_block(defaults)]
            has_connection_close = False
            for name, value in message.get("headers", ()):
                lowered = _CHECKED_NAMES.get(name)
                if lowered is None:
                    if HEADER_RE.search(name):
                        raise RuntimeError("Invalid HTTP header name.")
                    lowered = name.lower()
                    if len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
                        _CHECKED_NAMES[name] = lowered
                if value not in _CHECKED_VALUES:
                    if HEADER_VALUE_RE.search(value):
                        raise RuntimeError("Invalid HTTP header value.")
                    if len(_CHECKED_VALUES) < _CHECKED_VALUES_MAX and len(value) <= _CHECKED_VALUE_BYTES:
                        _CHECKED_VALUES.add(value)
                name = lowered
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                    self.keep_alive = False
                    has_connection_close = True
                content += (name, b": ", value, b"\r\n")
            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")
            head = self.scope["method"] == "HEAD"
            if self.chunked_encoding is None and not head and status_code not in (204, 304):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            if self.chunked_encoding is False and not head:  # held for its body (see the module)
                self._held = b"".join(content)
            else:
                self.transport.write(b"".join(content))
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
            elif self.chunked_encoding:
                if body:
                    chunk = b"%x\r\n%s\r\n" % (len(body), body)
                    self._write(chunk if more_body else chunk + b"0\r\n\r\n")
                else:
                    self._write(b"" if more_body else b"0\r\n\r\n")
            else:
                num_bytes = len(body)
                if num_bytes > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= num_bytes
                held = self._held
                if held is not None:  # (self._write, inlined: the usual case, a header block and its body)
                    self._held = None
                    self.transport.write(held + body)
                elif body:
                    self.transport.write(body)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.set()
                if not self.keep_alive:
                    self._close()
                self.on_response()
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    async def receive(self) -> ASGIReceiveEvent:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            if self.flow.read_paused:
                self.flow.resume_reading()
            if not self._ready:
                await self.wait()
            self._ready = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body: bytes = self.body  # type: ignore[assignment]
        self.body = b""  # type: ignore[assignment]
        return {"type": "http.request", "body": body, "more_body": self.more_body}


def _nothing() -> None:
    pass
