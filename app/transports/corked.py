"""A response's header block and its body leave in one write: one system call and one TCP segment, not two.

uvicorn writes a response's status line and headers to the transport when the application sends
``http.response.start``, and its body, in a second write, at ``http.response.body``. With ``TCP_NODELAY`` (uvloop
and asyncio set it) each write is a ``send(2)`` of its own and a packet of its own: for a small JSON-RPC answer,
about a tenth of the server's time per request goes to the first one (py-spy of the chart row, issue 25).

:class:`CorkedTransport` stands between one request's response cycle (not a HEAD request's) and the connection's
transport. When the cycle's first write is a header block with a ``Content-Length``, it holds it and sends it
together with the next write, the body, which the application sends in the same step (Starlette's ``Response``
does). Anything else (an event stream's headers, chunked; a ``100 Continue``) is written as it comes. Held bytes
never wait past the turn of the event loop they were written in: a callback at its end writes them, as do
``close()`` and every other use of the transport, and the guard protocol flushes them before it writes or cuts
anything itself. The order of the connection's bytes is the order they were written in.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CorkedTransport"]

_LENGTH = b"\r\ncontent-length: "  # as uvicorn writes the header (names lower-cased)


class CorkedTransport:
    """The transport of one response cycle, its first write held until the second or the end of the loop's turn
    (see the module). Everything but ``write`` and ``close`` goes to the transport itself, once the held bytes are
    written."""

    __slots__ = ("_flush", "_held", "_loop", "_transport", "_writes")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._flush: asyncio.Handle | None = None
        self._writes = 0

    def write(self, data: bytes) -> None:
        """The first write is held (and written at the end of this turn of the loop at the latest); the second
        goes out with it in one write; later ones go straight to the transport."""
        self._writes += 1
        if self._writes == 1 and _LENGTH in data:  # a body follows, in the same step for every answer of ours
            self._held = bytes(data)
            self._flush = self._loop.call_soon(self.flush)
        elif self._held is not None:
            self._transport.write(self._release() + data)
        else:
            self._transport.write(data)

    def _release(self) -> bytes:
        held, self._held = self._held or b"", None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        return held

    def flush(self) -> None:
        """Write the held bytes now (nothing when none are held, or when the connection is closing)."""
        if self._held is not None:
            held = self._release()
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # get_extra_info, is_closing, abort (which drops the held bytes, as it drops anything buffered), and
        # anything else: the transport's own. What could write goes after the held bytes.
        if name not in {"abort", "is_closing", "get_extra_info"}:
            self.flush()
        return getattr(self._transport, name)
