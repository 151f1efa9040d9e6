"""Newline-delimited JSON-RPC over TCP (stdio shares the framing): an over-long line is refused with its own id
when the id can be read from its start, and the line after it is answered as if nothing had happened."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import RunningServer, free_port, start_server

pytestmark = pytest.mark.slow

LIMIT = 4096
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("tcp")
    tcp_port = free_port()
    running = start_server(root, ["--no-auth", "--tcp-port", str(tcp_port)], {"ERLMCP_MAX_REQUEST_BYTES": str(LIMIT)})
    running.tcp_port = tcp_port  # type: ignore[attr-defined]
    yield running
    running.stop()


def listing(request_id: int | str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {"_meta": META}})


def echo(request_id: int | str, size: int) -> bytes:
    arguments = {"text": "x" * size}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                         "params": {"name": "echo", "arguments": arguments, "_meta": META}})  # fmt: skip


def answers(server: RunningServer, *lines: bytes) -> list[dict[str, object]]:
    """Send the lines on one connection; one answer per line, in order."""
    with socket.create_connection(("127.0.0.1", server.tcp_port), timeout=10) as conn:  # type: ignore[attr-defined]
        conn.sendall(b"".join(line + b"\n" for line in lines))
        received = conn.makefile("rb")
        return [orjson.loads(received.readline()) for _ in lines]


@pytest.mark.parametrize(
    "size", [LIMIT * 2, LIMIT * 64], ids=["over-long-line-buffered-whole", "over-long-line-in-parts"]
)
def test_an_over_long_line_is_refused_with_its_id_and_the_next_line_is_answered(
    server: RunningServer, size: int
) -> None:
    refused, answered = answers(server, echo(5, size), listing(6))
    assert refused["id"] == 5
    assert refused["error"]["code"] == -32600  # type: ignore[index]
    assert "too large" in refused["error"]["message"]  # type: ignore[index]
    assert answered["id"] == 6
    assert "tools" in answered["result"]  # type: ignore[operator]


def test_an_over_long_line_whose_id_cannot_be_read_is_refused_with_a_null_id(server: RunningServer) -> None:
    garbage = b'{"jsonrpc": "2.0", "params": {"x": "' + b"y" * LIMIT * 64 + b'"}, "id": 9}'
    refused, answered = answers(server, garbage, listing(10))
    assert refused["id"] is None  # the id comes long after the limit: it is never read
    assert answered["id"] == 10


def test_lines_within_the_limit_are_answered_in_turn(server: RunningServer) -> None:
    assert [a["id"] for a in answers(server, listing(1), echo("two", 10), listing(3))] == [1, "two", 3]
