"""A scoped API key lists and calls only its tools, whatever the transport: the same 2026-07-28 request (everything
in its own `_meta`) over streamable HTTP, legacy SSE, WebSocket and TCP gets the same tools and the same refusal.

The first part of the transport parity matrix of the protocol-core redesign (issue 22), against a real server over
real sockets (the SDK's own SSE client transport, the project's bridges for WebSocket and TCP). Handshake-era
sessions already carried the connection's scopes; the stream transports built the stateless context without them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.sse import sse_client
from mcp.shared.message import SessionMessage

from app.transports.tcp import API_KEY_META
from tests.conftest import RunningServer, free_port, start_server
from tests.integration.bridges import tcp_transport, websocket_transport
from tests.stateless import META
from tests.stateless import post as stateless_post

pytestmark = pytest.mark.slow

ADMIN, LIMITED = "admin-key-0123456789abcdef", "limited-key-0123456789abcdef"
TRANSPORTS = ["streamable-http", "sse", "websocket", "tcp"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root: Path = tmp_path_factory.mktemp("scopes")
    keys = root / "keys"
    keys.write_text(f"admin * {ADMIN}\nlimited tools:echo {LIMITED}\n")
    tcp_port = free_port()
    running = start_server(root, ["--api-key-file", str(keys), "--tcp-port", str(tcp_port)])
    running.tcp_port = tcp_port  # type: ignore[attr-defined]
    yield running
    running.stop()


@asynccontextmanager
async def streams(transport: str, server: RunningServer, key: str) -> AsyncIterator[Any]:
    bearer = {"Authorization": f"Bearer {key}"}
    if transport == "sse":
        async with sse_client(f"{server.url}/sse", headers=bearer) as pair:
            yield pair
    elif transport == "websocket":
        async with websocket_transport(f"ws://127.0.0.1:{server.port}/ws", headers=bearer) as pair:
            yield pair
    else:
        async with tcp_transport("127.0.0.1", server.tcp_port) as pair:  # type: ignore[attr-defined]
            yield pair


def stateless(method: str, params: dict[str, Any], key: str, request_id: int = 1) -> dict[str, Any]:
    """A 2026-07-28 request: everything in its own `_meta` (on TCP also the key, which has no header)."""
    return {"jsonrpc": "2.0", "id": request_id, "method": method,
            "params": {**params, "_meta": {**META, API_KEY_META: key}}}  # fmt: skip


def exchange(transport: str, server: RunningServer, key: str, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    """Send the requests on one connection of ``transport``; the answers, in order."""
    if transport == "streamable-http":  # the key goes in the header; the `_meta` is the standard one
        return [
            stateless_post(f"{server.url}/mcp", m["method"], {k: v for k, v in m["params"].items() if k != "_meta"},
                           request_id=m["id"], key=key).json()
            for m in messages
        ]  # fmt: skip

    async def run() -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        async with streams(transport, server, key) as (incoming, outgoing):
            for message in messages:
                await outgoing.send(SessionMessage(types.jsonrpc_message_adapter.validate_python(message)))
                with anyio.fail_after(10):
                    received = await incoming.receive()
                assert not isinstance(received, Exception), received
                answers.append(received.message.model_dump(by_alias=True, exclude_none=True))
        return answers

    return anyio.run(run)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_scoped_key_lists_only_its_tools_on_every_transport(server: RunningServer, transport: str) -> None:
    [listed] = exchange(transport, server, LIMITED, stateless("tools/list", {}, LIMITED))
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["echo"]
    [everything] = exchange(transport, server, ADMIN, stateless("tools/list", {}, ADMIN))
    assert len(everything["result"]["tools"]) > 1  # the admin key sees the whole catalogue on the same transport


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_scoped_key_calling_another_tool_gets_the_same_refusal_on_every_transport(
    server: RunningServer, transport: str
) -> None:
    call = stateless("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, LIMITED, request_id=7)
    allowed = stateless("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, LIMITED, request_id=8)
    refused, served = exchange(transport, server, LIMITED, call, allowed)
    [reference] = exchange("streamable-http", server, LIMITED, call)
    assert refused == reference  # the same error, code and message, as over /mcp
    assert refused["id"] == 7
    assert "error" in refused or refused["result"].get("isError") is True
    assert served["result"]["content"][0]["text"] == "hi"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that allows each caller 3 initialize requests a minute."""
    root: Path = tmp_path_factory.mktemp("initialize-limit")
    keys = root / "keys"
    keys.write_text(f"admin * {ADMIN}\n")
    tcp_port = free_port()
    running = start_server(root, ["--api-key-file", str(keys), "--tcp-port", str(tcp_port)],
                           {"ERLMCP_INITIALIZE_PER_MINUTE": "3"})  # fmt: skip
    running.tcp_port = tcp_port  # type: ignore[attr-defined]
    yield running
    running.stop()


def initialize(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"},
                       "_meta": {API_KEY_META: ADMIN}}}  # fmt: skip


@pytest.mark.parametrize("transport", ["sse", "websocket", "tcp"])
def test_the_initialize_limit_holds_across_connections_on_every_stream_transport(
    limited_server: RunningServer, transport: str
) -> None:
    """One connection carries one session, so a client opening many connections must meet the same per-caller
    initialize limit as over /mcp (one key once took the whole session table over 40 WebSocket connections)."""
    outcomes = [exchange(transport, limited_server, ADMIN, initialize(i))[0] for i in range(1, 6)]
    opened = [o for o in outcomes if "result" in o]
    refused = [o for o in outcomes if "error" in o]
    assert len(opened) <= 3, outcomes
    assert refused, outcomes
    assert all(o["error"]["message"].startswith("Too Many Requests: initialize is limited") for o in refused)
    assert all(o["error"]["data"]["retryAfter"] >= 1 for o in refused)
