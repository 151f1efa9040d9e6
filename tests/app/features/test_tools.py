from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from app.catalog import Catalog, ToolEntry
from app.features.builtins import BUILTINS, Builtin
from app.features.tools import Tools
from app.jsonrpc import InvalidParams

ECHO = Catalog(tools=(ToolEntry(name="echo", description="Echo.", builtin="echo"),))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_tools_list_describes_each_tool_with_its_input_schema() -> None:
    listed = Tools(ECHO, timeout_seconds=5).list()["tools"]
    assert listed == [{"name": "echo", "description": "Echo.", "inputSchema": dict(BUILTINS["echo"].input_schema)}]


def test_echo_returns_the_text_it_is_given() -> None:
    called = run(Tools(ECHO, timeout_seconds=5).call({"name": "echo", "arguments": {"text": "héllo"}}))
    assert called.outcome == "ok"
    assert called.result == {"content": [{"type": "text", "text": "héllo"}], "isError": False}


def test_wrong_arguments_are_a_tool_error_naming_the_problem() -> None:
    called = run(Tools(ECHO, timeout_seconds=5).call({"name": "echo", "arguments": {"text": 1}}))
    assert called.outcome == "invalid_arguments"
    assert called.result["isError"] is True
    assert "text" in called.result["content"][0]["text"]


def test_an_unknown_tool_is_invalid_params() -> None:
    with pytest.raises(InvalidParams) as caught:
        run(Tools(ECHO, timeout_seconds=5).call({"name": "nope"}))
    assert caught.value.code == -32602


@pytest.mark.parametrize("params", [{}, {"name": 3}, {"name": "echo", "arguments": [1]}])
def test_malformed_call_params_are_invalid_params(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        run(Tools(ECHO, timeout_seconds=5).call(params))


def _builtin(run_: Any) -> Mapping[str, Builtin]:
    return {"echo": Builtin(input_schema={"type": "object"}, run=run_)}


def test_a_tool_that_runs_past_its_deadline_is_stopped_and_reported() -> None:
    async def slow(_: Mapping[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    called = run(Tools(ECHO, timeout_seconds=0.05, builtins=_builtin(slow)).call({"name": "echo"}))
    assert called.outcome == "timeout"
    assert called.result["isError"] is True


def test_a_tool_that_raises_is_a_tool_error_without_the_exception_text() -> None:
    async def broken(_: Mapping[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")

    called = run(Tools(ECHO, timeout_seconds=5, builtins=_builtin(broken)).call({"name": "echo"}))
    assert called.outcome == "error"
    assert "secret internal detail" not in called.result["content"][0]["text"]
