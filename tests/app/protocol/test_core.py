"""The protocol core answers the same whatever the transport and mode: findings of the redesign's review."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.testclient import TestClient

from app import __version__
from app.jsonrpc import Message
from app.observability.metrics import Metrics
from app.protocol.core import ProtocolCore
from app.protocol.dispatcher import Outcome
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


# -- the bounds of a batch (red-team finding 2; the real-server scenarios: tests/security/test_batches_are_bounded.py)


def batch_core(monkeypatch: pytest.MonkeyPatch, *, answer_bytes: int = 10, **settings: Any) -> tuple[ProtocolCore, Run]:
    """A core with the given batch settings whose requests are answered by a fake: each takes a moment, counts how
    many run at once, and answers a text of ``answer_bytes``."""
    app = create_app(Settings(no_auth=True, **settings), metrics=Metrics(__version__))
    core: ProtocolCore = app.state.protocol_core
    fake = Run(answer_bytes)
    monkeypatch.setattr(core, "run", fake)
    return core, fake


class Run:
    def __init__(self, answer_bytes: int) -> None:
        self.answer_bytes = answer_bytes
        self.ran: list[Any] = []
        self.now = self.most = 0

    async def __call__(self, message: Message, ctx: Any) -> Outcome:
        self.ran.append(message.id)
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.01)
        self.now -= 1
        response = {"jsonrpc": "2.0", "id": message.id, "result": {"text": "x" * self.answer_bytes}}
        return Outcome(response, message.method or "", "ok")


def run_batch(core: ProtocolCore, items: list[Any]) -> list[dict[str, Any]]:
    caller = Caller("anonymous", address="127.0.0.1")

    async def scenario() -> list[dict[str, Any]]:
        session = await core.sessions.create(
            protocol_version="2025-03-26", client_info={}, client_capabilities={}, principal=caller.principal
        )
        return await core.batch(items, session, caller)

    return asyncio.run(scenario())


def ping(request_id: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "ping"}


def test_a_batch_over_the_item_limit_is_refused_whole_and_none_of_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    core, fake = batch_core(monkeypatch, max_batch_items=3)
    refusal = core.batch_refusal([ping(i) for i in range(4)])
    assert refusal is not None
    assert refusal.status == 413
    assert refusal.error.message == (
        "Invalid Request: a batch of 4 messages is more than the 3 this server takes in one batch; send smaller batches"
    )
    assert core.batch_refusal([ping(i) for i in range(3)]) is None
    # Should a transport hand it over all the same, it is answered with the refusal alone.
    assert run_batch(core, [ping(i) for i in range(4)]) == [refusal.answer(None)]
    assert fake.ran == []


def test_a_batch_runs_at_most_its_concurrency_at_once_and_answers_in_the_items_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core, fake = batch_core(monkeypatch, max_batch_concurrency=3)
    items: list[Any] = [ping(i) for i in range(10)]
    items.insert(4, {"jsonrpc": "2.0", "id": 99})  # not a message: answered in its place
    answers = run_batch(core, items)
    assert [answer["id"] for answer in answers] == [0, 1, 2, 3, 99, 4, 5, 6, 7, 8, 9]
    assert answers[4]["error"]["code"] == -32600
    assert fake.most == 3


def test_the_answers_of_a_batch_stop_at_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers of about 1000 bytes, a budget of 3500: three answers fit; the one that would pass the budget is
    dropped for an error, and the requests not yet started then are not run."""
    core, fake = batch_core(monkeypatch, answer_bytes=1000, max_batch_concurrency=1, max_batch_response_bytes=3500)
    answers = run_batch(core, [ping(i) for i in range(6)])
    assert [answer["id"] for answer in answers] == list(range(6))
    assert all("result" in answer for answer in answers[:3])
    dropped, not_run = answers[3]["error"], answers[4]["error"]
    assert dropped["code"] == not_run["code"] == -32030
    assert "was dropped" in dropped["message"]
    assert "3500 bytes" in dropped["message"]
    assert not_run["message"].startswith("Batch answer full: not run: ")
    assert "3500 bytes" in not_run["message"]
    assert not_run["data"] == {"maxBatchResponseBytes": 3500}
    assert answers[5]["error"] == not_run
    assert fake.ran == [0, 1, 2, 3]
