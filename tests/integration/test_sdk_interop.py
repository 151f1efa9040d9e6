"""The official MCP Python SDK client against the real server, in both protocol eras."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.conftest import RunningServer, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("interop"), ["--no-auth", "--catalog", "conformance"])
    yield running
    running.stop()


async def session(url: str, mode: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        async with Client(url, mode=mode) as client:
            tools = await client.list_tools()
            called = await client.call_tool("test_simple_text", {})
            resource = await client.read_resource("test://static-text")
            templated = await client.read_resource("test://template/42/data")
            prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
            return {
                "version": client.protocol_version,
                "tools": {tool.name for tool in tools.tools},
                "called": called.content[0].text,  # type: ignore[union-attr]
                "resource": resource.contents[0].text,  # type: ignore[union-attr]
                "templated": templated.contents[0].text,  # type: ignore[union-attr]
                "prompt": prompt.messages[0].content.text,  # type: ignore[union-attr]
            }


@pytest.mark.parametrize(("mode", "version"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
def test_the_sdk_client_lists_calls_reads_and_gets_prompts(server: RunningServer, mode: str, version: str) -> None:
    seen = anyio.run(session, f"{server.url}/mcp", mode)
    assert seen["version"] == version
    assert {"test_simple_text", "test_sampling", "json_schema_2020_12_tool"} <= seen["tools"]
    assert seen["called"] == "This is a simple text response for testing."
    assert seen["resource"] == "This is the content of the static text resource."
    assert '"id": "42"' in seen["templated"]
    assert seen["prompt"] == "Prompt with arguments: arg1='a', arg2='b'"


def test_the_sdk_client_answers_a_sampling_request_mid_call(server: RunningServer, tmp_path: Path) -> None:
    from mcp.client.session import ClientRequestContext
    from mcp_types import CreateMessageRequestParams, CreateMessageResult, TextContent

    async def sample(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        asked = params.messages[0].content.text  # type: ignore[union-attr]
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=f"echo:{asked}"),
                                   model="test-model")  # fmt: skip

    async def run() -> str:
        with anyio.fail_after(30):
            async with Client(f"{server.url}/mcp", mode="legacy", sampling_callback=sample) as client:
                called = await client.call_tool("test_sampling", {"prompt": "hi"})
                return str(called.content[0].text)  # type: ignore[union-attr]

    assert anyio.run(run) == "LLM response: echo:hi"
