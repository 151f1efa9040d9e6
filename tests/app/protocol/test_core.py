"""The protocol core answers the same whatever the transport and mode: findings of the redesign's review."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.testclient import TestClient

from app import __version__
from app.observability.metrics import Metrics
from app.protocol.core import ProtocolCore
from app.security.gate import Caller
from app.settings import Settings
from app.wiring import create_app

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def test_a_websocket_session_works_on_a_server_in_stateless_mode() -> None:
    """``--stateless`` makes HTTP keep no sessions; a stream transport's connection is its session all the same
    (the shared core once answered initialize without opening one, then refused every request)."""
    app = create_app(Settings(no_auth=True, stateless=True), metrics=Metrics(__version__))
    with TestClient(app) as client, client.websocket_connect("ws://127.0.0.1/ws", subprotocols=["mcp"]) as ws:
        ws.send_json(INITIALIZE)
        assert ws.receive_json()["result"]["protocolVersion"] == "2025-03-26"
        ws.send_json({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        listed = ws.receive_json()
    assert listed["id"] == 2
    assert "echo" in [tool["name"] for tool in listed["result"]["tools"]]


def test_a_cancelled_batch_item_is_left_out_and_the_others_are_answered() -> None:
    """A 2025-03-26 batch whose one request the client cancels (notifications/cancelled) answers the rest; the
    cancelled one is owed nothing (the whole batch once failed with a 500)."""
    metrics = Metrics(__version__)
    app = create_app(Settings(no_auth=True, catalog="conformance"), metrics=metrics)
    core: ProtocolCore = app.state.protocol_core
    caller = Caller("anonymous", address="127.0.0.1")

    async def scenario() -> list[dict[str, Any]]:
        session = await core.sessions.create(
            protocol_version="2025-03-26", client_info={}, client_capabilities={}, principal=caller.principal
        )
        items = [
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_tool_with_logging"}},
        ]
        batch = asyncio.create_task(core.batch(items, session, caller))
        while 2 not in session.in_flight:
            await asyncio.sleep(0.001)
        session.in_flight[2].cancel()  # what notifications/cancelled does
        return await batch

    answers = asyncio.run(scenario())
    assert answers == [{"jsonrpc": "2.0", "id": 1, "result": {}}]
    cancelled = metrics.mcp_cancellations.labels(transport="streamable-http")._value.get()
    assert cancelled == 1
