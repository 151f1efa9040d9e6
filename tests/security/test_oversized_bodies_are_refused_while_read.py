"""A request body over the size limit is refused while it is read, not after (red-team finding 3).

The review POSTed 200 MiB in chunks (no Content-Length) to the legacy ``/messages`` endpoint: it was refused 413,
but only once the server had read all of it (its memory went from 124 to 516 MiB). Now the server stops reading at
the limit (ERLMCP_MAX_REQUEST_BYTES, 4 MiB in the chart): the same POST, to ``/messages`` and to ``/mcp``, is
refused 413 with a JSON-RPC error naming the limit (and the id the message started with), the server's memory
grows by far less than the body, and it goes on answering.
"""

from __future__ import annotations

import queue
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.security.conftest import ChartServer, serve_as_chart
from tests.security.memory import PeakRss

pytestmark = pytest.mark.slow

TIMEOUT = 30.0  # liveness bound of every step: a hang fails the test
LIMIT = 4 * 1024 * 1024  # the chart's ERLMCP_MAX_REQUEST_BYTES (the server's default)
TOTAL = 200 * 1024 * 1024  # what the review sent
CHUNK = 64 * 1024
INVALID_REQUEST = -32600
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
# The start of the oversized message: its id comes before the text that makes it too large.
HEAD = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    running = serve_as_chart(tmp_path_factory, "oversized-bodies")
    yield running
    running.stop()


@dataclass
class Answer:
    status: int
    body: bytes
    sent: int  # bytes of the body the client got to send before the answer came

    def json(self) -> Any:
        return orjson.loads(self.body)


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of an HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the connection closed before the answer's headers: {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, "the connection closed in the middle of the answer's body"
        body += piece
    return status, body[:length]


def post_chunked(server: ChartServer, path: str, headers: dict[str, str], total: int = TOTAL) -> Answer:
    """POST ``total`` bytes to ``path`` in chunks (Transfer-Encoding: chunked, so no Content-Length tells the size
    before it is read), stopping as soon as the server answers."""
    fields = {**headers, "Host": f"127.0.0.1:{server.running.port}", "Transfer-Encoding": "chunked"}
    request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    framed = f"{CHUNK:x}\r\n".encode() + b"x" * CHUNK + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.running.port), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode() + b"\r\n" + f"{len(HEAD):x}\r\n".encode() + HEAD + b"\r\n")
        sent = len(HEAD)
        try:
            while sent < total:
                answered, _, _ = select.select([sock], [], [], 0)
                if answered:
                    break
                sock.sendall(framed)
                sent += CHUNK
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer is waiting
        status, body = _read_answer(sock)
    return Answer(status, body, sent)


class SseStream:
    """GET /sse of a key, read in a thread: ``endpoint`` is the URL it announced, ``next`` its next message."""

    def __init__(self, server: ChartServer, key: str) -> None:
        self._messages: queue.Queue[Any] = queue.Queue()
        self._endpoint: queue.Queue[str] = queue.Queue()
        self._client = httpx.Client(base_url=server.url, timeout=httpx.Timeout(TIMEOUT, read=None))
        self._response = self._client.send(
            self._client.build_request("GET", "/sse", headers={**server.headers(key), "Accept": "text/event-stream"}),
            stream=True,
        )
        assert self._response.status_code == 200, self._response.read()
        threading.Thread(target=self._pump, daemon=True).start()
        self.endpoint = self._endpoint.get(timeout=TIMEOUT)

    def _pump(self) -> None:
        event, data = "message", []
        try:
            for line in self._response.iter_lines():
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    event = value if name == "event" else event
                    data += [value] if name == "data" else []
                    continue
                if data and event == "endpoint":
                    self._endpoint.put("".join(data))
                elif data:
                    self._messages.put(orjson.loads("\n".join(data)))
                event, data = "message", []
        except httpx.HTTPError:
            pass

    def next(self) -> Any:
        try:
            return self._messages.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"nothing came on the /sse stream within {TIMEOUT:g} s") from None

    def close(self) -> None:
        self._response.close()
        self._client.close()


def assert_refused_as_too_large(answer: Answer) -> None:
    assert answer.status == 413, f"{answer.status}: {answer.body[:300]!r}"
    refusal = answer.json()
    assert refusal["id"] == 7, refusal
    assert refusal["error"]["code"] == INVALID_REQUEST, refusal
    assert "too large" in refusal["error"]["message"], refusal
    assert str(LIMIT) in refusal["error"]["message"], refusal


def test_a_chunked_body_over_the_limit_to_messages_is_refused_while_read(server: ChartServer) -> None:
    stream = SseStream(server, "limited")
    try:
        endpoint_headers = {**server.headers("limited"), "Content-Type": "application/json"}
        with PeakRss(server.running.process.pid) as memory:
            answer = post_chunked(server, stream.endpoint, endpoint_headers)

        assert answer.status == 413, f"{answer.status}: {answer.body[:300]!r}"
        assert memory.growth < 50, f"the server's RSS grew by {memory.growth:.0f} MiB (from {memory.baseline:.0f})"
        assert_refused_as_too_large(answer)
        assert stream.next() == answer.json(), "the refusal did not come on the stream too"

        hello = {"jsonrpc": "2.0", "id": 8, "method": "initialize", "params": INIT}
        sent = httpx.post(f"{server.url}{stream.endpoint}", json=hello, headers=endpoint_headers, timeout=TIMEOUT)
        assert sent.status_code == 202, sent.text
        opened = stream.next()
        assert opened["id"] == 8, opened
        assert opened["result"]["protocolVersion"] == "2025-11-25", opened
    finally:
        stream.close()


def test_a_chunked_body_over_the_limit_to_mcp_is_refused_while_read(server: ChartServer) -> None:
    with PeakRss(server.running.process.pid) as memory:
        answer = post_chunked(server, "/mcp", server.headers("limited"))

    assert answer.status == 413, f"{answer.status}: {answer.body[:300]!r}"
    assert memory.growth < 50, f"the server's RSS grew by {memory.growth:.0f} MiB (from {memory.baseline:.0f})"
    assert_refused_as_too_large(answer)
    opened = httpx.post(
        server.mcp,
        json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT},
        headers=server.headers("limited"),
        timeout=TIMEOUT,
    )
    assert opened.status_code == 200, opened.text
    assert opened.json()["result"]["protocolVersion"] == "2025-11-25"
