from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.features.tasks import TaskContext, TaskStore
from app.jsonrpc import InternalError, InvalidParams


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_task_runs_in_the_background_and_keeps_its_result() -> None:
    async def scenario() -> dict[str, Any]:
        store = TaskStore()

        async def work(_: TaskContext) -> dict[str, Any]:
            await asyncio.sleep(0.01)
            return {"content": [{"type": "text", "text": "done"}]}

        task = store.start(work)
        assert store.get(task.id).status == "working"
        await asyncio.wait_for(task.worker, 5)  # type: ignore[arg-type]
        return store.get(task.id).describe(detailed=True)

    shown = run(scenario())
    assert shown["status"] == "completed"
    assert shown["result"]["content"][0]["text"] == "done"
    assert isinstance(shown["ttlMs"], int)


def test_a_protocol_error_fails_the_task_with_its_code_and_no_result() -> None:
    async def scenario() -> dict[str, Any]:
        store = TaskStore()

        async def crash(_: TaskContext) -> dict[str, Any]:
            raise InternalError("boom")

        task = store.start(crash)
        await asyncio.wait_for(task.worker, 5)  # type: ignore[arg-type]
        return task.describe(detailed=True)

    shown = run(scenario())
    assert (shown["status"], shown["error"]["code"], "result" in shown) == ("failed", -32603, False)


def test_cancel_is_immediate_and_the_first_terminal_state_wins() -> None:
    async def scenario() -> tuple[str, str]:
        store = TaskStore()

        async def slow(_: TaskContext) -> dict[str, Any]:
            await asyncio.sleep(60)
            return {}

        task = store.start(slow)
        await asyncio.sleep(0)
        task.cancel()
        first = task.status
        task.finish(result={"content": []})
        await asyncio.sleep(0)
        return first, task.status

    assert run(scenario()) == ("cancelled", "cancelled")


def test_partial_answers_leave_the_task_waiting_for_the_rest() -> None:
    async def scenario() -> list[Any]:
        store = TaskStore()

        async def ask(ctx: TaskContext) -> dict[str, Any]:
            answers = await ctx.ask({"a": {"method": "elicitation/create"}, "b": {"method": "elicitation/create"}})
            return {"content": [{"type": "text", "text": f"{answers['a']}+{answers['b']}"}]}

        task = store.start(ask)
        await asyncio.sleep(0.01)
        seen: list[Any] = [task.status, sorted(task.input_requests)]
        first, second = sorted(task.input_requests)
        task.deliver({first: "x", "unknown-key": "ignored"})
        seen += [task.status, sorted(task.input_requests)]
        task.deliver({second: "y"})
        await asyncio.wait_for(task.worker, 5)  # type: ignore[arg-type]
        seen.append(task.status)
        seen.append(task.result["content"][0]["text"] if task.result else None)
        return seen

    waiting, keys, still, left, done, text = run(scenario())
    assert (waiting, len(keys), still, len(left)) == ("input_required", 2, "input_required", 1)
    assert (done, text) == ("completed", "x+y")


def test_an_unknown_task_is_invalid_params() -> None:
    with pytest.raises(InvalidParams):
        TaskStore().get("task-nope")


def test_a_finished_task_expires_after_its_ttl() -> None:
    async def scenario() -> None:
        now = [0.0]
        store = TaskStore(ttl_ms=1000, clock=lambda: now[0])

        async def quick(_: TaskContext) -> dict[str, Any]:
            return {"content": []}

        task = store.start(quick)
        await asyncio.wait_for(task.worker, 5)  # type: ignore[arg-type]
        assert store.get(task.id).status == "completed"
        now[0] += 2
        with pytest.raises(InvalidParams):
            store.get(task.id)

    run(scenario())
