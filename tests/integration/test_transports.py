"""One behaviour, five transports: the official SDK client drives the real server over each."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import ROOT, RunningServer, free_port, start_server
from tests.integration.bridges import tcp_transport, websocket_transport

pytestmark = pytest.mark.slow

TRANSPORTS = ["streamable-http", "sse", "websocket", "stdio", "tcp"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tcp_port = free_port()
    running = start_server(tmp_path_factory.mktemp("transports"),
                           ["--no-auth", "--catalog", "conformance", "--tcp-port", str(tcp_port)])  # fmt: skip
    running.tcp_port = tcp_port  # type: ignore[attr-defined]
    yield running
    running.stop()


def client_for(transport: str, server: RunningServer, **options: Any) -> Client:
    target: Any
    if transport == "streamable-http":
        target = f"{server.url}/mcp"
    elif transport == "sse":
        target = sse_client(f"{server.url}/sse")
    elif transport == "websocket":
        target = websocket_transport(f"ws://127.0.0.1:{server.port}/ws")
    elif transport == "stdio":
        arguments = ["-m", "app", "--transport", "stdio", "--catalog", "conformance"]
        target = StdioServerParameters(command=sys.executable, args=arguments, cwd=str(ROOT))
    else:
        target = tcp_transport("127.0.0.1", server.tcp_port)  # type: ignore[attr-defined]
    return Client(target, mode="legacy", **options)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_same_behaviour_over_every_transport(server: RunningServer, transport: str) -> None:
    reported: list[float] = []
    logs: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append(progress)

    async def on_log(params: Any) -> None:
        logs.append(str(params.data))

    async def session() -> dict[str, Any]:
        with anyio.fail_after(30):
            async with client_for(transport, server, logging_callback=on_log) as client:
                tools = await client.list_tools()
                simple = await client.call_tool("test_simple_text", {})
                with_progress = await client.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
                logged = await client.call_tool("test_tool_with_logging", {})
                resource = await client.read_resource("test://static-binary")
                prompt = await client.get_prompt("test_simple_prompt")
                return {
                    "version": client.protocol_version,
                    "tools": len(tools.tools),
                    "simple": simple.content[0].text,  # type: ignore[union-attr]
                    "progress_result": with_progress.content[0].text,  # type: ignore[union-attr]
                    "logged": logged.content[0].text,  # type: ignore[union-attr]
                    "blob": resource.contents[0].blob,  # type: ignore[union-attr]
                    "prompt": prompt.messages[0].content.text,  # type: ignore[union-attr]
                }

    seen = anyio.run(session)
    assert seen["version"] == "2025-11-25"
    assert seen["tools"] > 20
    assert seen["simple"] == "This is a simple text response for testing."
    assert seen["logged"] == "Tool with logging executed successfully"
    assert seen["blob"]
    assert seen["prompt"] == "This is a simple prompt for testing."
    assert reported == [0, 50, 100]
    assert logs == ["Tool execution started", "Tool processing data", "Tool execution completed"]


def cancellations(server: RunningServer, transport: str) -> float:
    for line in httpx.get(server.metrics_url).text.splitlines():
        if line.startswith(f'mcp_requests_cancelled_total{{transport="{transport}"}}'):
            return float(line.split()[-1])
    return 0.0


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("transport", [t for t in TRANSPORTS if t != "stdio"])  # stdio: a process of its own
def test_a_request_cancelled_by_the_client_stops_on_every_transport(server: RunningServer, transport: str) -> None:
    before = cancellations(server, transport)

    async def session() -> str:
        with anyio.fail_after(30):
            async with client_for(transport, server) as client:
                with anyio.move_on_after(0.5):  # abandoning the call sends notifications/cancelled
                    await client.call_tool("slow_compute", {"seconds": 20})
                # The connection is still usable afterwards.
                after = await client.call_tool("test_simple_text", {})
                return str(after.content[0].text)  # type: ignore[union-attr]

    assert anyio.run(session) == "This is a simple text response for testing."
    # The server stopped the call (20 s of work) instead of finishing it for nobody.
    assert wait_for(lambda: cancellations(server, transport) == before + 1)
