"""A task belongs to the key that started it: to any other key, even one with the same scopes, it does not exist.

The outside review started ``confirm_delete`` as a task with the key ``admin`` (the conformance catalogue); the
task asked "Delete 'prod.db'?". The key ``other`` then read that task with ``tasks/get`` and answered the question
with ``tasks/update``. Every tasks method, sent by another key with the task's real id, must now be refused exactly
as an id that was never issued is refused, and the task must go on untouched for its owner.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.security.conftest import KEYS, ChartServer, serve_as_chart
from tests.sse import response_message

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS_EXTENSION: {}}},
    "io.modelcontextprotocol/clientInfo": {"name": "security-test", "version": "1"},
}
NAMED_BY = {"tools/call": "name", "tasks/get": "taskId", "tasks/update": "taskId", "tasks/cancel": "taskId"}
TWIN_ADMIN = {**KEYS, "admin2": ("*", "admin2-key-0123456789abcdef")}
NEVER_ISSUED = "task-0123456789abcdef01234567"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    running = serve_as_chart(tmp_path_factory, "tasks", args=["--catalog", "conformance"], keys=TWIN_ADMIN)
    yield running
    running.stop()


def send(server: ChartServer, key: str, method: str, **params: Any) -> dict[str, Any]:
    """One 2026-07-28 request by ``key`` that declares the tasks extension: the JSON-RPC response (its id removed)
    with the HTTP status under ``"status"``."""
    headers = server.headers(key, **{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method})
    if method in NAMED_BY and isinstance(params.get(NAMED_BY[method]), str):
        headers["Mcp-Name"] = params[NAMED_BY[method]]
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": {**params, "_meta": META}}
    response = httpx.post(server.mcp, headers=headers, content=orjson.dumps(body), timeout=20)
    message = response_message(response.headers["content-type"], response.text)
    message.pop("id", None)
    return {**message, "status": response.status_code}


def started_task_asking(server: ChartServer, key: str, filename: str) -> str:
    """Start ``confirm_delete`` as a task of ``key`` and wait until it asks its question; the task id."""
    created = send(server, key, "tools/call", name="confirm_delete", arguments={"filename": filename})
    assert created["result"]["resultType"] == "task", created
    task_id = str(created["result"]["taskId"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if send(server, key, "tasks/get", taskId=task_id)["result"]["status"] == "input_required":
            return task_id
        time.sleep(0.1)
    raise AssertionError("the task never asked its question")


def as_if_never_issued(response: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The response with the task id replaced by one never issued, to compare it with that id's refusal."""
    replaced: dict[str, Any] = orjson.loads(orjson.dumps(response).replace(task_id.encode(), NEVER_ISSUED.encode()))
    return replaced


YES = {"action": "accept", "content": {"confirm": True}}


@pytest.mark.parametrize("stranger", ["other", "admin2"])
def test_another_key_cannot_see_answer_cancel_or_list_a_task_and_learns_nothing_of_it(
    server: ChartServer, stranger: str
) -> None:
    task_id = started_task_asking(server, "admin", "prod.db")
    question = send(server, "admin", "tasks/get", taskId=task_id)["result"]["inputRequests"]
    [(input_key, request)] = question.items()
    assert request["params"]["message"] == "Delete 'prod.db'?"

    attempts: dict[str, dict[str, Any]] = {
        "tasks/get": {"taskId": task_id},
        "tasks/update": {"taskId": task_id, "inputResponses": {input_key: YES}},
        "tasks/cancel": {"taskId": task_id},
        "tasks/result": {"taskId": task_id},
    }
    for method, params in attempts.items():
        by_stranger = send(server, stranger, method, **params)
        never_issued = send(server, stranger, method, **{**params, "taskId": NEVER_ISSUED})
        assert "result" not in by_stranger, (method, by_stranger)
        assert as_if_never_issued(by_stranger, task_id) == never_issued, method
        assert "prod.db" not in orjson.dumps(by_stranger).decode(), method

    listed = send(server, stranger, "tasks/list")
    assert task_id not in orjson.dumps(listed).decode()
    assert "prod.db" not in orjson.dumps(listed).decode()

    # The owner's task is untouched: still asking the same question, neither answered nor cancelled.
    after = send(server, "admin", "tasks/get", taskId=task_id)["result"]
    assert after["status"] == "input_required"
    assert after["inputRequests"] == question

    # And the owner can still finish it.
    assert "result" in send(server, "admin", "tasks/update", taskId=task_id, inputResponses={input_key: YES})
    deadline = time.monotonic() + 20
    while (shown := send(server, "admin", "tasks/get", taskId=task_id)["result"])["status"] != "completed":
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    assert shown["result"]["content"][0]["text"] == "deleted 'prod.db'"


def test_the_refusal_names_the_unknown_task_with_invalid_params(server: ChartServer) -> None:
    task_id = started_task_asking(server, "admin", "other.db")
    refused = send(server, "other", "tasks/get", taskId=task_id)
    assert refused["error"]["code"] == -32602
    assert refused["error"]["message"] == f"task not found: {task_id}"
    send(server, "admin", "tasks/cancel", taskId=task_id)
