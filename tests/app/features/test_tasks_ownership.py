"""A task belongs to the principal (API key or token) that started it: to anyone else it does not exist."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from app.features import Features
from app.features.tasks import TASKS_EXTENSION, RunAsTask, TaskContext, TaskStore
from app.features.tools import Tools, ToolSpec, text_result
from app.jsonrpc import InvalidParams, Message
from app.protocol.context import RequestContext
from app.protocol.dispatcher import Dispatcher
from app.protocol.request_state import RequestStateSealer


async def _ask_then_answer(_: Mapping[str, Any], __: RequestContext) -> RunAsTask:
    async def work(task: TaskContext) -> dict[str, Any]:
        answers = await task.ask({"confirm": {"method": "elicitation/create", "params": {"message": "Go?"}}})
        return text_result(f"answered {answers['confirm']}")

    return RunAsTask(work)


ASKING_TOOL = ToolSpec(
    name="ask_then_answer",
    description="Asks the user one question, inside a task",
    input_schema={"type": "object"},
    handler=_ask_then_answer,
    task_support="required",
)


def dispatcher() -> Dispatcher:
    features = Features(tools=Tools([ASKING_TOOL], timeout_seconds=5))
    return Dispatcher(features=features, server_name="t", server_version="1", sealer=RequestStateSealer(b"k" * 32))


async def send(server: Dispatcher, principal: str | None, method: str, **params: Any) -> dict[str, Any]:
    """One 2026-07-28 request that declares the tasks extension, from ``principal``: its response."""
    ctx = RequestContext(
        request_id=1,
        method=method,
        stateless=True,
        request_client_capabilities={"extensions": {TASKS_EXTENSION: {}}},
        principal=principal,
    )
    outcome = await server.dispatch_stateless(Message(method=method, id=1, params=params), ctx)
    return outcome.response


async def start_task(server: Dispatcher, principal: str | None) -> str:
    """Start the asking tool as a task of ``principal`` and wait until it asks; the task id."""
    response = await send(server, principal, "tools/call", name="ask_then_answer", arguments={})
    assert response["result"]["resultType"] == "task"
    task_id = str(response["result"]["taskId"])
    for _ in range(100):
        shown = await send(server, principal, "tasks/get", taskId=task_id)
        if shown["result"]["status"] == "input_required":
            return task_id
        await asyncio.sleep(0.01)
    raise AssertionError("the task never asked for input")


def not_found(task_id: str) -> dict[str, Any]:
    """The error of a task id that was never issued."""
    return {"code": -32602, "message": f"task not found: {task_id}", "data": {"taskId": task_id}}


def test_a_task_started_by_one_key_is_unknown_to_another() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        server = dispatcher()
        try:
            task_id = await start_task(server, "alice")
            by_bob = await send(server, "bob", "tasks/get", taskId=task_id)
            never_issued = await send(server, "bob", "tasks/get", taskId="task-000000000000000000000000")
            return by_bob, never_issued, task_id
        finally:
            server.close()

    by_bob, never_issued, task_id = asyncio.run(scenario())
    assert "result" not in by_bob
    assert by_bob["error"] == not_found(task_id)  # exactly as if the id had never been issued
    assert never_issued["error"] == not_found("task-000000000000000000000000")


def test_another_key_can_neither_answer_nor_cancel_a_task() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        server = dispatcher()
        try:
            task_id = await start_task(server, "alice")
            shown = (await send(server, "alice", "tasks/get", taskId=task_id))["result"]
            key = next(iter(shown["inputRequests"]))
            refused = [
                await send(server, "bob", "tasks/update", taskId=task_id, inputResponses={key: "yes"}),
                await send(server, "bob", "tasks/cancel", taskId=task_id),
            ]
            await asyncio.sleep(0.01)
            after = (await send(server, "alice", "tasks/get", taskId=task_id))["result"]
            return [response["error"] for response in refused], after
        finally:
            server.close()

    errors, after = asyncio.run(scenario())
    assert errors == [not_found(after["taskId"])] * 2
    assert after["status"] == "input_required"  # neither answered nor cancelled
    assert len(after["inputRequests"]) == 1


def test_the_key_that_started_a_task_answers_it_and_reads_its_result() -> None:
    async def scenario() -> dict[str, Any]:
        server = dispatcher()
        try:
            task_id = await start_task(server, "alice")
            asking: dict[str, Any] = (await send(server, "alice", "tasks/get", taskId=task_id))["result"]
            key = next(iter(asking["inputRequests"]))
            answered = await send(server, "alice", "tasks/update", taskId=task_id, inputResponses={key: "yes"})
            assert answered["result"] == {"resultType": "complete"}
            for _ in range(100):
                shown: dict[str, Any] = (await send(server, "alice", "tasks/get", taskId=task_id))["result"]
                if shown["status"] == "completed":
                    break
                await asyncio.sleep(0.01)
            return shown
        finally:
            server.close()

    shown = asyncio.run(scenario())
    assert shown["status"] == "completed"
    assert shown["result"]["content"][0]["text"] == "answered yes"


def test_the_key_that_started_a_task_cancels_it() -> None:
    async def scenario() -> str:
        server = dispatcher()
        try:
            task_id = await start_task(server, "alice")
            assert "result" in await send(server, "alice", "tasks/cancel", taskId=task_id)
            return str((await send(server, "alice", "tasks/get", taskId=task_id))["result"]["status"])
        finally:
            server.close()

    assert asyncio.run(scenario()) == "cancelled"


def test_an_anonymous_task_and_a_named_keys_task_are_unknown_to_each_other() -> None:
    async def scenario() -> list[dict[str, Any]]:
        server = dispatcher()
        try:
            anonymous = await start_task(server, None)
            named = await start_task(server, "alice")
            return [
                await send(server, "alice", "tasks/get", taskId=anonymous),
                await send(server, None, "tasks/get", taskId=named),
            ]
        finally:
            server.close()

    by_alice, by_anonymous = asyncio.run(scenario())
    assert by_alice["error"] == not_found(by_alice["error"]["data"]["taskId"])
    assert by_anonymous["error"] == not_found(by_anonymous["error"]["data"]["taskId"])


def test_the_store_hands_a_task_only_to_its_principal() -> None:
    async def scenario() -> None:
        store = TaskStore()

        async def quick(_: TaskContext) -> dict[str, Any]:
            return {"content": []}

        task = store.start(quick, principal="alice")
        assert store.get(task.id, principal="alice") is task
        for other in ("bob", None, "Alice"):
            with pytest.raises(InvalidParams) as refused:
                store.get(task.id, principal=other)
            assert (refused.value.message, refused.value.data) == (f"task not found: {task.id}", {"taskId": task.id})
        store.close()

    asyncio.run(scenario())
