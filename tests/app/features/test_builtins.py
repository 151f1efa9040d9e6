"""The built-in tools of the default catalogue: the calculator set and system_info."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.features.builtins import BUILTINS
from app.features.schemas import SchemaCheck
from app.features.tools import ToolError
from app.protocol.context import RequestContext

CTX = RequestContext(request_id=1, method="tools/call")


def run(name: str, **arguments: Any) -> dict[str, Any]:
    result: dict[str, Any] = asyncio.run(BUILTINS[name].run(arguments, CTX))  # type: ignore[arg-type]
    return result


@pytest.mark.parametrize(("name", "arguments", "expected"), [
    ("add", {"a": 2, "b": 3}, 5), ("subtract", {"a": 2, "b": 3.5}, -1.5), ("multiply", {"a": -4, "b": 2.5}, -10),
    ("divide", {"a": 1, "b": 4}, 0.25), ("power", {"base": 2, "exponent": 10}, 1024), ("sqrt", {"x": 2.25}, 1.5),
    ("add", {"a": 0.1, "b": 0.2}, 0.30000000000000004),
])  # fmt: skip
def test_the_calculator_answers_in_text_and_structured_content(name: str, arguments: dict[str, Any],
                                                                 expected: float) -> None:  # fmt: skip
    result = run(name, **arguments)
    assert result["structuredContent"] == {"result": expected}
    assert result["content"] == [{"type": "text", "text": str(expected)}]
    output = BUILTINS[name].output_schema
    assert output is not None
    assert SchemaCheck(output).problems(result["structuredContent"]) == []


@pytest.mark.parametrize(("name", "arguments", "message"), [
    ("divide", {"a": 1, "b": 0}, "division by zero"),
    ("sqrt", {"x": -1}, "negative number is not a real number"),
    ("power", {"base": 10.0, "exponent": 400}, "too large"),
    ("power", {"base": 10, "exponent": 10**9}, "too large"),
    ("power", {"base": -8, "exponent": 0.5}, "no real power"),
    ("multiply", {"a": 1e308, "b": 10}, "too large"),
])  # fmt: skip
def test_impossible_arithmetic_is_a_tool_error_that_says_why(name: str, arguments: dict[str, Any],
                                                              message: str) -> None:  # fmt: skip
    with pytest.raises(ToolError, match=message):
        run(name, **arguments)


def test_system_info_describes_the_server_and_matches_its_output_schema() -> None:
    result = run("system_info")
    info = result["structuredContent"]
    assert info["server"] == "erlmcp"
    assert info["cpus"] >= 1
    assert info["uptimeSeconds"] >= 0
    output = BUILTINS["system_info"].output_schema
    assert output is not None
    assert SchemaCheck(output).problems(info) == []
