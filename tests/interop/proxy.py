"""A TCP proxy that cuts the event streams it carries when asked: the network a GET stream loses its connection
in (a load balancer's timeout, a NAT rebinding, an ingress pod going away), put between a real client and the
server.

It relays bytes both ways and reads only the first word of what a client sends: a connection whose last request
is a GET carries an SSE stream (streamable HTTP's GET stream, or a resumption of one). A cut aborts both sockets
of every such connection at once, so that neither side gets another byte of it (``abort``, not ``close``: a close
would still deliver what is buffered). Idle keep-alive connections are left alone: cutting one makes the client's
next POST race the reset (the TypeScript SDK's undici then picks the dead socket from its pool and fails the call
with "other side closed"), a race of HTTP clients that has nothing to do with the streams under test.

The cut is asked for over a control port, by ``POST /cut``, and answered once the streams are gone; so the client
that asked knows that the call it makes next runs while its GET stream is away. The first ``cuts`` requests cut,
later ones are answered without cutting (``not cut``): the test, not the client, decides how many cuts a run gets.

It runs its own event loop in a thread, since the test that owns it waits on a subprocess meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

CHUNK = 65536
REQUEST = re.compile(rb"(GET|POST|DELETE|PUT|PATCH|HEAD|OPTIONS) \S+ HTTP/1\.1\r\n")


@dataclass(eq=False)  # hashed by identity: the proxy keeps its open links in a set
class Link:
    """One proxied connection: the client's side and the server's side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    streaming: bool = False  # its last request is a GET: it carries an event stream

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


@dataclass
class CuttingProxy:
    """Relays ``127.0.0.1:port`` to ``127.0.0.1:upstream``; ``POST /cut`` on ``control_port`` cuts the connections
    that carry an event stream, for the first ``cuts`` requests. ``cut_sizes``: how many each cut ended."""

    upstream: int
    cuts: int
    port: int = 0
    control_port: int = 0
    cut_sizes: list[int] = field(default_factory=list)
    _links: set[Link] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cut_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}/cut"

    async def serve(self, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        relay = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        control = await asyncio.start_server(self._control, "127.0.0.1", 0)
        self.port = relay.sockets[0].getsockname()[1]
        self.control_port = control.sockets[0].getsockname()[1]
        ready.set()
        async with relay, control:
            await self._stop.wait()
            for link in list(self._links):
                link.abort()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    def cut(self) -> int:
        """Abort every connection that carries an event stream; how many there were."""
        links = [link for link in self._links if link.streaming]
        for link in links:
            link.abort()
            self._links.discard(link)
        self.cut_sizes.append(len(links))
        return len(links)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        link = Link(client_writer, upstream_writer)
        self._links.add(link)
        try:
            await asyncio.gather(_pump(client_reader, upstream_writer, link), _pump(upstream_reader, client_writer))
        finally:
            self._links.discard(link)
            link.abort()

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"POST /cut "):
                status, body = "200 OK", (f"cut {self.cut()}" if len(self.cut_sizes) < self.cuts else "not cut")
            else:
                status, body = "404 Not Found", "POST /cut"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n{body}".encode()
            )
            await writer.drain()
        writer.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: Link | None = None) -> None:
    """Copy one direction until it ends; then the whole connection ends (the caller aborts both sides). On the
    client's side (``requests``), note whether each request is a GET: a request's head comes in one write, so a
    chunk that starts with a method starts a request."""
    with suppress(OSError):
        while chunk := await reader.read(CHUNK):
            if requests is not None and (method := REQUEST.match(chunk)):
                requests.streaming = method[1] == b"GET"
            writer.write(chunk)
            await writer.drain()
    writer.transport.abort()


@contextmanager
def cutting_proxy(upstream: int, *, cuts: int) -> Iterator[CuttingProxy]:
    """A running :class:`CuttingProxy` in front of ``upstream``, stopped on exit."""
    proxy = CuttingProxy(upstream, cuts)
    ready = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(proxy.serve(ready),), name="cutting-proxy", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise AssertionError("the cutting proxy did not start within 10 s")
    try:
        yield proxy
    finally:
        proxy.stop()
        thread.join(10)
