"""Catalogue tools of kind python: schemas from type hints, results, errors, and sync code off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from app.catalog.model import PythonToolEntry
from app.catalog.python_tool import import_function, python_tool_handler, schema_from_hints, tool_result_of
from app.features.tools import ToolError, ToolResult
from app.protocol.context import RequestContext
from tests.app.catalog import functions

CTX = RequestContext(request_id=1, method="tools/call")

T = TypeVar("T")


def wait(awaitable: Awaitable[T]) -> T:
    """Run one awaitable to its end on a new event loop."""

    async def run() -> T:
        return await awaitable

    return asyncio.run(run())


def call(name: str, arguments: dict[str, Any], **entry: Any) -> ToolResult:
    spec = PythonToolEntry.model_validate({"kind": "python", "name": name, "description": "d",
                                           "function": f"tests.app.catalog.functions:{name}", **entry})  # fmt: skip
    with ThreadPoolExecutor(2, thread_name_prefix="erlmcp-tool") as threads:
        handler = python_tool_handler(spec, import_function(spec.function), threads=threads, pool=None)
        result = wait(handler(arguments, CTX))
    assert isinstance(result, dict)
    return result


def test_the_input_schema_comes_from_the_type_hints_with_defaults_optional() -> None:
    assert schema_from_hints(functions.greet) == {
        "type": "object",
        "properties": {"name": {"type": "string"}, "punctuation": {"type": "string", "default": "!"}},
        "required": ["name"],
        "additionalProperties": False,
    }


def test_a_parameter_without_a_hint_takes_any_json_value() -> None:
    schema = schema_from_hints(functions.untyped)
    assert schema["properties"]["anything"] == {}
    assert schema["required"] == ["anything", "count"]


def test_a_function_that_cannot_take_keyword_arguments_is_refused() -> None:
    with pytest.raises(ValueError, match="parameter 'args' cannot be given by name"):
        schema_from_hints(functions.variadic)


@pytest.mark.parametrize(("target", "message"), [
    ("tests.app.catalog.nowhere:f", "cannot import module 'tests.app.catalog.nowhere'"),
    ("tests.app.catalog.functions:missing", "has no attribute 'missing'"),
    ("tests.app.catalog.functions:Forecast.x", None),
])  # fmt: skip
def test_a_function_that_does_not_import_is_named(target: str, message: str | None) -> None:
    if message is None:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the pattern refuses it before any import
            PythonToolEntry.model_validate({"kind": "python", "name": "x", "description": "d", "function": target})
        return
    with pytest.raises(ValueError, match=message):
        import_function(target)


def test_a_string_is_text_and_a_sync_function_runs_in_a_tool_thread_not_the_loop() -> None:
    assert call("greet", {"name": "Ada"}) == {"content": [{"type": "text", "text": "Hello, Ada!"}], "isError": False}
    ran_on = call("thread_name", {})["content"][0]["text"]
    assert ran_on.startswith("erlmcp-tool")
    assert ran_on != threading.main_thread().name


def test_an_async_function_returning_a_model_gives_structured_content_with_an_output_schema() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}}}
    result = call("forecast", {"city": "Oslo", "days": 2}, outputSchema=schema)
    assert result["structuredContent"] == {"city": "Oslo", "celsius": 22.5}
    assert result["content"] == [{"type": "text", "text": '{"city":"Oslo","celsius":22.5}'}]


def test_a_whole_result_is_passed_through() -> None:
    assert call("whole_result", {})["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]


def test_a_tool_error_carries_the_functions_message() -> None:
    with pytest.raises(ToolError, match="refused: no"):
        call("refuse", {"reason": "no"})


def test_values_that_are_not_json_or_not_an_object_for_an_output_schema_are_tool_errors() -> None:
    with pytest.raises(ToolError, match="not JSON"):
        tool_result_of(object(), structured=False)
    with pytest.raises(ToolError, match="returned list, not an object"):
        tool_result_of([1, 2], structured=True)
    assert tool_result_of(None, structured=False) == {"content": [], "isError": False}


@pytest.mark.slow
def test_an_unexpected_exception_in_a_worker_is_reported_as_in_a_thread_without_its_details() -> None:
    from app.runtime.pool import WorkerPool

    def call_in_worker(function: str) -> str:
        spec = PythonToolEntry.model_validate({"kind": "python", "name": "t", "description": "d",
                                               "function": function, "isolation": "process"})  # fmt: skip

        async def run() -> str:
            pool = WorkerPool(size=1, memory_limit_mb=256)
            try:
                with ThreadPoolExecutor(1) as threads:
                    await python_tool_handler(spec, import_function(function), threads=threads, pool=pool)({}, CTX)
            except ToolError as exc:
                return str(exc)
            finally:
                await pool.aclose()
            raise AssertionError("no tool error")

        return asyncio.run(run())

    failed = call_in_worker("tests.app.runtime.functions:fail")
    assert failed == "Tool 't' failed; the server log has the details"
    assert "not what I expected" not in failed
    assert call_in_worker("tests.app.catalog.functions:crash") == "Tool 't' failed; the server log has the details"
