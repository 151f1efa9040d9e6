"""A response's header block and its body leave in one write; an event stream's headers leave before its first
event without waiting for it. Driven through the server's real HTTP protocol (uvicorn's httptools protocol with
the guard's limits) and its real MCP application; the stand-in is the socket's transport, which records each write
(what a ``send(2)`` would be) and leaves out the kernel, so this says nothing about segments on the wire."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from app.transports.guard import guarded_protocol

JSON_BODY = b'{"jsonrpc":"2.0","id":1,"result":{}}'


class RecordingTransport(asyncio.Transport):
    """The socket's transport, reduced to what it was asked to write and whether it is closing."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


async def json_app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(JSON_BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": JSON_BODY})


first_event = asyncio.Event()


async def stream_app(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await first_event.wait()
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def protocol_factory(app: Any) -> Callable[[], asyncio.Protocol]:
    """Makes the server's HTTP protocol (uvicorn's httptools protocol with the guard's limits) serving ``app``."""
    config = uvicorn.Config(app, http="httptools", log_level="warning", lifespan="off")
    config.load()
    protocol_class = guarded_protocol(header_timeout=5, body_timeout=5, max_header_bytes=65536)
    return lambda: protocol_class(config=config, server_state=ServerState(), app_state={})


def connected(app: Any) -> tuple[asyncio.Protocol, RecordingTransport]:
    """A new connection of the server's protocol serving ``app``, on a transport that records its writes."""
    protocol, transport = protocol_factory(app)(), RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


def serve_one(app: Any, request: bytes, *, until_first_event: bool = False) -> list[bytes]:
    """Feed ``request`` to a fresh connection of the server's protocol serving ``app``; the writes it made."""

    async def scenario() -> list[bytes]:
        first_event.clear()
        protocol, transport = connected(app)
        protocol.data_received(request)
        for _ in range(20):  # the request's task runs, and whatever it scheduled
            await asyncio.sleep(0)
        if until_first_event:
            seen = list(transport.writes)
            first_event.set()
            for _ in range(20):
                await asyncio.sleep(0)
            protocol.connection_lost(None)
            return [*seen, b"--- first event ---", *transport.writes[len(seen) :]]
        protocol.connection_lost(None)
        return transport.writes

    return asyncio.run(scenario())


POST = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_a_json_answer_leaves_in_one_write_headers_and_body_together() -> None:
    writes = serve_one(json_app, POST)
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + JSON_BODY)


def test_an_event_streams_headers_leave_before_its_first_event_is_ready() -> None:
    writes = serve_one(stream_app, b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", until_first_event=True)
    marker = writes.index(b"--- first event ---")
    assert marker == 1, writes  # the header block alone, written while the stream has nothing to say yet
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b"\r\n\r\n")
    assert b"".join(writes[marker + 1 :]) == b"9\r\ndata: 1\n\n\r\n0\r\n\r\n"


def test_two_pipelined_requests_get_their_answers_in_order_each_in_one_write() -> None:
    writes = serve_one(json_app, POST + POST)
    assert len(writes) == 2, writes
    assert all(write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(JSON_BODY) for write in writes)


def test_a_real_connection_gets_the_whole_answer() -> None:
    """The same through a real socket pair and asyncio's own transport: the bytes arrive whole and in order."""

    async def scenario() -> bytes:
        make = protocol_factory(json_app)
        server_end, client_end = socket.socketpair()
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(
            make,
            server_end,
        )
        client_end.setblocking(False)
        await loop.sock_sendall(client_end, POST)
        received = b""
        while not received.endswith(JSON_BODY):
            received += await asyncio.wait_for(loop.sock_recv(client_end, 65536), 10)
        client_end.close()
        return received

    received = asyncio.run(scenario())
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\n" + JSON_BODY)


def test_what_has_no_body_to_wait_for_is_written_in_the_turn_it_was_sent() -> None:
    """Only a header block with a Content-Length, of a request that is not HEAD, waits for its body (which the
    application sends in the same step); a HEAD answer's headers and an event stream's are written as they come,
    so nothing the protocol writes itself in the next turn (a 400, a 431) can overtake them."""

    async def first_step_writes(app: Any, request: bytes) -> list[bytes]:
        protocol, transport = connected(app)
        protocol.data_received(request)
        await asyncio.sleep(0)  # the request's task takes its first step (scheduled before this one resumes)
        seen = list(transport.writes)
        protocol.connection_lost(None)
        return seen

    head = b"HEAD /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head_writes = asyncio.run(first_step_writes(json_app, head))
    assert len(head_writes) == 1
    assert head_writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert head_writes[0].endswith(b"\r\n\r\n")
    stream_writes = asyncio.run(first_step_writes(stream_app, b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    assert len(stream_writes) == 1
    assert stream_writes[0].endswith(b"transfer-encoding: chunked\r\n\r\n")
