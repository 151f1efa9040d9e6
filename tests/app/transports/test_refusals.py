"""The WebSocket, HTTP+SSE and TCP transports refuse what the MCP endpoint refuses: wrong origin, no key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import RunningServer, free_port, start_server

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789abcdef"
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(KEY + "\n")
    tcp_port = free_port()
    running = start_server(Path(keys.parent), ["--api-key-file", str(keys), "--tcp-port", str(tcp_port)])
    running.tcp_port = tcp_port  # type: ignore[attr-defined]
    yield running
    running.stop()


def ws_status(server: RunningServer, headers: dict[str, str], subprotocols: list[str]) -> int:
    async def attempt() -> int:
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/ws", subprotocols=subprotocols or None,  # type: ignore[arg-type]
                               additional_headers=headers):  # fmt: skip
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    return asyncio.run(attempt())


def test_websocket_upgrades_with_the_key_and_the_mcp_subprotocol(server: RunningServer) -> None:
    assert ws_status(server, {"Authorization": f"Bearer {KEY}"}, ["mcp"]) == 101


@pytest.mark.parametrize(
    ("headers", "subprotocols", "status"),
    [
        ({}, ["mcp"], 401),
        ({"Authorization": "Bearer wrong"}, ["mcp"], 401),
        ({"Authorization": f"Bearer {KEY}"}, [], 400),
        ({"Authorization": f"Bearer {KEY}", "Origin": "http://evil.example"}, ["mcp"], 403),
    ],
)
def test_websocket_refuses_the_upgrade_without_key_subprotocol_or_with_a_foreign_origin(
    server: RunningServer, headers: dict[str, str], subprotocols: list[str], status: int
) -> None:
    assert ws_status(server, headers, subprotocols) == status  # the status an HTTP request gets for the same


def test_legacy_sse_needs_the_key_and_an_open_stream(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/sse").status_code == 401
    posted = httpx.post(f"{server.url}/messages?session_id=nope", json={}, headers={"Authorization": f"Bearer {KEY}"})
    assert posted.status_code == 404


def test_tcp_needs_the_key_in_the_first_message(server: RunningServer) -> None:
    async def exchange(first: dict[str, object]) -> dict[str, object]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)  # type: ignore[attr-defined]
        writer.write(json.dumps(first).encode() + b"\n")
        await writer.drain()
        answer = json.loads(await asyncio.wait_for(reader.readline(), 10))
        writer.close()
        await writer.wait_closed()
        return dict(answer)

    refused = asyncio.run(exchange({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}))
    assert refused["error"]["code"] == -32600  # type: ignore[index]
    with_key = {**INIT, "_meta": {"io.erlmcp/apiKey": KEY}}
    accepted = asyncio.run(exchange({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": with_key}))
    assert accepted["result"]["protocolVersion"] == "2025-11-25"  # type: ignore[index]
