"""Slow and oversized clients are cut off while the server keeps serving others (real sockets, real server)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import RunningServer, rss_mib, start_server
from tests.stateless import META

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"ERLMCP_HEADER_TIMEOUT_SECONDS": "1", "ERLMCP_BODY_TIMEOUT_SECONDS": "1", "ERLMCP_MAX_HEADER_BYTES": "8192"}
    running = start_server(tmp_path_factory.mktemp("guard"), ["--no-auth"], env)
    yield running
    running.stop()


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> tuple[bool, bytes]:
    """Keep trickling bytes (if any) until the server closes the connection or ``seconds`` pass."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    received = b""
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            chunk = sock.recv(65536)
            if not chunk:
                return True, received
            received += chunk
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True, received
    return False, received


def probe(server: RunningServer) -> int:
    return httpx.get(f"{server.url}/livez", timeout=2).status_code


def test_headers_sent_a_byte_at_a_time_are_cut_off_and_others_are_served(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert probe(server) == 200
        cut, _ = closed_within(slow, 5, trickle=b"X")
    assert cut


def test_a_connection_that_sends_nothing_is_cut_off(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        cut, _ = closed_within(idle, 5)
    assert cut


def test_a_body_that_stalls_is_cut_off(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")  # fmt: skip
        assert probe(server) == 200
        cut, _ = closed_within(slow, 5)
    assert cut


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_50_mb_body_is_refused_without_being_read(server: RunningServer, declared: bool) -> None:
    size = 50 * 1024 * 1024
    head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
    head += f"Content-Length: {size}\r\n\r\n".encode() if declared else b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 65536
    framed = chunk if declared else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, reset = 0, False
    with socket.create_connection(("127.0.0.1", server.port)) as big:
        big.sendall(head)
        big.settimeout(0.05)
        answer = b""
        while sent < size:
            try:
                big.sendall(framed)
                sent += len(chunk)
                answer += big.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                reset = True  # the server answered and closed; the answer may be lost with the reset
                break
            if answer:
                break
    assert sent < size  # refused long before 50 MB had gone in
    assert answer.startswith(b"HTTP/1.1 413") or (reset and not answer), answer[:200]
    assert probe(server) == 200


def test_an_oversized_header_block_is_431(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/livez", headers={f"x-pad-{i}": "y" * 1000 for i in range(12)})
    assert response.status_code == 431
    assert probe(server) == 200


def test_a_websocket_outlives_the_request_deadlines_once_it_has_spoken(server: RunningServer, tmp_path: Path) -> None:
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    with connect(f"ws://127.0.0.1:{server.port}/ws", subprotocols=["mcp"]) as ws:  # type: ignore[list-item]
        ws.send(httpx.Response(200, json=ping).text)  # the first message is due within the header deadline
        assert ws.recv(timeout=5)
        time.sleep(2.5)  # longer than both deadlines
        ws.send(httpx.Response(200, json=ping | {"id": 2}).text)
        assert ws.recv(timeout=5)


def test_a_websocket_that_sends_no_first_message_is_closed_with_a_reason(server: RunningServer) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    with connect(url, subprotocols=["mcp"]) as ws, pytest.raises(ConnectionClosed) as closed:  # type: ignore[list-item]
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "no first message within 1 s of the upgrade"


def test_the_metrics_listener_cuts_off_silent_connections_and_answers_probes(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.metrics_port)) as silent:
        assert httpx.get(f"http://127.0.0.1:{server.metrics_port}/livez", timeout=2).status_code == 200
        cut, _ = closed_within(silent, 5)
    assert cut


def stalled_reader(server: RunningServer, request: bytes) -> socket.socket:
    """A connection that sends ``request`` and then never reads: its receive window closes at once."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(request)
    return sock


def test_a_client_that_stops_reading_its_response_is_cut_off_and_its_memory_released(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(7 * 1024 * 1024))  # about 9.3 MB of JSON once base64-encoded
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"resources:\n  - {{uri: 'file:///big', name: big, kind: file, path: '{big}', "
                       "mimeType: application/octet-stream}\n")  # fmt: skip
    running = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog)], {"ERLMCP_WRITE_TIMEOUT_SECONDS": "1"})
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
                         "params": {"uri": "file:///big", "_meta": META}})  # fmt: skip
    request = (b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2026-07-28\r\n"
               b"Mcp-Method: resources/read\r\nMcp-Name: file:///big\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    stalled: list[socket.socket] = []
    try:
        baseline = rss_mib(running.process.pid)
        stalled += [stalled_reader(running, request) for _ in range(4)]
        time.sleep(0.5)
        assert probe(running) == 200  # others are served while four clients sit on 37 MB of answers
        time.sleep(2.5)  # past the write timeout
        after = rss_mib(running.process.pid)
        outcomes = [closed_within(sock, 5) for sock in stalled]
        log = running.log.read_text()
    finally:
        for sock in stalled:
            sock.close()
        running.stop()
    for cut, received in outcomes:
        assert cut, "a client that stopped reading was never cut off"
        assert len(received) < 9 * 1024 * 1024  # it did not get its answer: the server gave up on it
    assert log.count("connection cut: the client stopped reading") == 4
    assert after - baseline < 40, f"the server kept {after - baseline:.0f} MiB after cutting the stalled clients"


def cuts(server: RunningServer, reason: str) -> float:
    """erlmcp_connections_refused_total{transport="http", reason=...} as /metrics reports it now."""
    text = httpx.get(server.metrics_url, timeout=5).text
    wanted = f'erlmcp_connections_refused_total{{reason="{reason}",transport="http"}} '
    found = [line for line in text.splitlines() if line.startswith(wanted)]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.parametrize(
    ("reason", "opening"),
    [
        ("header_deadline", b""),
        ("body_deadline", b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\n{"),
    ],
    ids=["headers", "body"],
)
def test_every_deadline_cut_of_the_http_listener_is_counted(server: RunningServer, reason: str, opening: bytes) -> None:
    before = cuts(server, reason)
    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(opening)
        cut, _ = closed_within(slow, 5)
    assert cut
    assert cuts(server, reason) == before + 1
