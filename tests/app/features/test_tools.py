from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from app.features.builtins import BUILTINS
from app.features.schemas import MAX_PROBLEMS
from app.features.tools import ToolError, ToolHandler, Tools, ToolSpec
from app.jsonrpc import InvalidParams
from app.protocol.context import RequestContext

ECHO = ToolSpec(name="echo", description="Echo.", input_schema=BUILTINS["echo"].input_schema,
                handler=BUILTINS["echo"].run)  # fmt: skip
CTX = RequestContext(request_id=1, method="tools/call")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def tools(*specs: ToolSpec, timeout: float = 5, page_size: int = 100) -> Tools:
    return Tools(specs or (ECHO,), timeout_seconds=timeout, page_size=page_size)


def spec(handler: ToolHandler, **extra: Any) -> ToolSpec:
    return ToolSpec(name="t", description="T.", input_schema={"type": "object"}, handler=handler, **extra)


def test_tools_list_describes_each_tool_with_its_input_schema() -> None:
    listed = tools().list({})["tools"]
    assert listed == [{"name": "echo", "description": "Echo.", "inputSchema": dict(BUILTINS["echo"].input_schema)}]


def test_the_arguments_a_tool_mirrors_into_headers_are_its_x_mcp_header_properties_in_schema_order() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "Zone"}, "b": {"type": "string"},
              "c": {"x-mcp-header": "Trace-Id"}, "d": True}}  # fmt: skip
    registry = tools(ECHO, ToolSpec(name="t", description="T.", input_schema=schema, handler=ECHO.handler))
    assert registry.mirrored("t") == (("a", "Zone"), ("c", "Trace-Id"))
    assert registry.mirrored("echo") == registry.mirrored("missing") == ()
    registry.remove("t")
    assert registry.mirrored("t") == ()


def test_tools_list_pages_with_an_opaque_cursor() -> None:
    many = [ToolSpec(name=f"t{i}", description="d", input_schema={"type": "object"}, handler=ECHO.handler)
            for i in range(5)]  # fmt: skip
    registry = Tools(many, timeout_seconds=5, page_size=2)
    names, cursor = [], None
    while True:
        page = registry.list({"cursor": cursor} if cursor else {})
        names += [tool["name"] for tool in page["tools"]]
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert names == [f"t{i}" for i in range(5)]


@pytest.mark.parametrize("cursor", ["nonsense", 5, "ZXJsbWNwOjk5"])
def test_a_cursor_the_server_did_not_give_is_invalid_params(cursor: object) -> None:
    with pytest.raises(InvalidParams):
        tools().list({"cursor": cursor})


def test_echo_returns_the_text_it_is_given() -> None:
    called = run(tools().call({"name": "echo", "arguments": {"text": "héllo"}}, CTX))
    assert called.outcome == "ok"
    assert called.result == {"content": [{"type": "text", "text": "héllo"}], "isError": False}


def test_wrong_arguments_are_a_tool_error_naming_the_problem() -> None:
    called = run(tools().call({"name": "echo", "arguments": {"text": 1}}, CTX))
    assert called.outcome == "invalid_arguments"
    assert called.result["isError"] is True
    assert "text" in called.result["content"][0]["text"]


def test_wrong_arguments_are_named_in_json_notation() -> None:
    called = run(tools().call({"name": "echo", "arguments": {"text": None}}, CTX))
    assert (
        called.result["content"][0]["text"] == "Invalid arguments for tool 'echo': text: null is not of type \"string\""
    )


def test_a_call_with_many_wrong_arguments_names_the_first_ones_and_says_so() -> None:
    many = ToolSpec(name="many", description="M.", handler=ECHO.handler,
                    input_schema={"type": "object", "additionalProperties": {"type": "string"}})  # fmt: skip
    called = run(tools(many).call({"name": "many", "arguments": {f"a{i:03}": i for i in range(100)}}, CTX))
    text = called.result["content"][0]["text"]
    assert text.startswith("Invalid arguments for tool 'many': a000: 0 is not of type \"string\"; a001: 1 is")
    assert text.endswith(f"(the first {MAX_PROBLEMS} problems)")
    assert "a099" not in text


def test_an_unknown_tool_is_invalid_params() -> None:
    with pytest.raises(InvalidParams) as caught:
        run(tools().call({"name": "nope"}, CTX))
    assert caught.value.code == -32602


@pytest.mark.parametrize("params", [{}, {"name": 3}, {"name": "echo", "arguments": [1]}])
def test_malformed_call_params_are_invalid_params(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        run(tools().call(params, CTX))


def test_a_tool_that_runs_past_its_deadline_is_stopped_and_reported() -> None:
    async def slow(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    called = run(tools(spec(slow), timeout=0.05).call({"name": "t"}, CTX))
    assert called.outcome == "timeout"
    assert called.result["isError"] is True


def test_a_tool_that_raises_is_a_tool_error_without_the_exception_text() -> None:
    async def broken(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")

    called = run(tools(spec(broken)).call({"name": "t"}, CTX))
    assert called.outcome == "error"
    assert "secret internal detail" not in called.result["content"][0]["text"]


def test_a_tool_error_carries_its_message_to_the_client() -> None:
    async def refuses(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        raise ToolError("the quota is used up")

    called = run(tools(spec(refuses)).call({"name": "t"}, CTX))
    assert called.result["content"][0]["text"] == "the quota is used up"
    assert called.result["isError"] is True


def test_structured_output_is_checked_against_the_output_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    async def good(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {"structuredContent": {"n": 3}}

    async def bad(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {"structuredContent": {"n": "three"}, "content": []}

    ok = run(tools(spec(good, output_schema=schema)).call({"name": "t"}, CTX))
    assert ok.result["structuredContent"] == {"n": 3}
    assert ok.result["content"] == [{"type": "text", "text": '{"n":3}'}]
    assert run(tools(spec(bad, output_schema=schema)).call({"name": "t"}, CTX)).outcome == "error"


def test_a_tool_may_answer_with_a_protocol_error_such_as_url_elicitation_required() -> None:
    from app.jsonrpc import UrlElicitationRequired

    elicitation = {"mode": "url", "elicitationId": "e1", "url": "https://auth.example/consent", "message": "Sign in"}

    async def needs_consent(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        raise UrlElicitationRequired("Sign-in required", data={"elicitations": [elicitation]})

    with pytest.raises(UrlElicitationRequired) as caught:
        run(tools(spec(needs_consent)).call({"name": "t"}, CTX))
    assert caught.value.to_error()["code"] == -32042


def test_a_tools_own_timeout_ends_its_call_before_the_servers_maximum() -> None:
    async def slow(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    called = run(tools(spec(slow, timeout_seconds=0.05), timeout=5).call({"name": "t"}, CTX))
    assert called.outcome == "timeout"
    assert "timed out after 0.05 s" in called.result["content"][0]["text"]


def test_a_tools_timeout_longer_than_the_servers_maximum_is_capped() -> None:
    async def slow(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    called = run(tools(spec(slow, timeout_seconds=60), timeout=0.05).call({"name": "t"}, CTX))
    assert called.outcome == "timeout"
    assert "timed out after 0.05 s" in called.result["content"][0]["text"]


def test_a_concurrency_limit_lets_that_many_calls_run_at_once_and_the_rest_wait() -> None:
    running, most = 0, 0

    async def counted(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return {"content": [], "isError": False}

    registry = tools(spec(counted, max_concurrency=2))

    async def many() -> list[str]:
        calls = [registry.call({"name": "t"}, CTX) for _ in range(7)]
        return [outcome.outcome for outcome in await asyncio.gather(*calls)]

    assert run(many()) == ["ok"] * 7
    assert most == 2


def test_waiting_for_a_free_slot_counts_against_the_deadline() -> None:
    async def hold(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(10)
        return {}

    registry = tools(spec(hold, max_concurrency=1, timeout_seconds=0.1))

    async def two() -> list[str]:
        return [o.outcome for o in await asyncio.gather(registry.call({"name": "t"}, CTX),
                                                         registry.call({"name": "t"}, CTX))]  # fmt: skip

    assert run(two()) == ["timeout", "timeout"]


# The deadline is armed only once a call suspends (a timeout acts at an await): these pin that a call behaves
# alike whether it finishes in its first step or after suspending.


def test_a_tool_that_never_suspends_is_answered_without_a_deadline_armed() -> None:
    async def quick(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {"content": [], "isError": False}

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        called = await tools(spec(quick)).call({"name": "t"}, CTX)
        return called, len(loop._scheduled) - timers  # type: ignore[attr-defined]

    called, armed = run(call())
    assert called.outcome == "ok"
    assert armed == 0


def test_a_tool_that_suspends_and_finishes_is_answered_with_its_result() -> None:
    async def waits(arguments: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return {"content": [{"type": "text", "text": arguments["text"]}], "isError": False}

    called = run(tools(spec(waits), timeout=5).call({"name": "t", "arguments": {"text": "hi"}}, CTX))
    assert called.outcome == "ok"
    assert called.result["content"][0]["text"] == "hi"


def test_a_tool_that_suspends_past_its_deadline_is_timed_out_with_the_same_message() -> None:
    async def slow(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        await asyncio.sleep(60)
        raise AssertionError("not reached")

    called = run(tools(spec(slow), timeout=0.05).call({"name": "t"}, CTX))
    assert called.outcome == "timeout"
    assert called.result == {"content": [{"type": "text", "text": "Tool 't' timed out after 0.05 s"}], "isError": True}


def test_the_deadline_counts_from_the_calls_start_not_from_its_first_suspension() -> None:
    import time

    async def busy_then_waits(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        time.sleep(0.1)  # the first step alone outlasts the deadline
        await asyncio.sleep(0.2)
        return {"content": [], "isError": False}

    async def call() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        called = await tools(spec(busy_then_waits), timeout=0.05).call({"name": "t"}, CTX)
        return called.outcome, loop.time() - started

    outcome, took = run(call())
    assert outcome == "timeout"
    assert took < 0.2  # stopped at its first await, not a full deadline after it


def test_a_tool_that_suspends_then_raises_is_a_tool_error() -> None:
    async def fails_later(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        await asyncio.sleep(0)
        raise ToolError("gave up after waiting")

    called = run(tools(spec(fails_later)).call({"name": "t"}, CTX))
    assert called.outcome == "error"
    assert called.result["content"][0]["text"] == "gave up after waiting"


def test_a_tool_cancelled_while_suspended_is_cancelled_and_sees_the_cancellation() -> None:
    seen: list[str] = []
    started = asyncio.Event()

    async def waits(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return {}

    async def call() -> bool:
        task = asyncio.ensure_future(tools(spec(waits), timeout=5).call({"name": "t"}, CTX))
        await started.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return task.cancelled()
        return False

    assert run(call()) is True
    assert seen == ["cancelled"]


def test_a_tool_in_a_slot_that_finishes_at_once_frees_its_slot() -> None:
    async def quick(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {"content": [], "isError": False}

    registry = tools(spec(quick, max_concurrency=1))

    async def twice() -> list[str]:
        return [(await registry.call({"name": "t"}, CTX)).outcome for _ in range(2)]

    assert run(twice()) == ["ok", "ok"]


def test_a_handler_that_answers_without_an_awaitable_is_a_tool_failure_not_a_crash() -> None:
    def not_async(_: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {"content": [], "isError": False}

    called = run(tools(spec(not_async)).call({"name": "t"}, CTX))  # type: ignore[arg-type]
    assert called.outcome == "error"
    assert called.result["content"][0]["text"] == "Tool 't' failed; the server log has the details"
