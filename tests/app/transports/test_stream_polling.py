"""SSE polling (SEP-1699: priming events, ``retry`` hints, call streams the server ends mid-call) only for sessions
that negotiated 2025-11-25, as the official SDKs do: older clients read an empty priming event as a broken message
and never come back to a stream ended mid-call. Keep-alives parse as nothing in every client's SSE parser."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningServer, start_server
from tests.sse import events

pytestmark = pytest.mark.slow

KEEPALIVE = 0.2  # seconds: the server's ERLMCP_SSE_KEEPALIVE_SECONDS, so that a one-second call carries keep-alives
OLDER = ["2024-11-05", "2025-03-26", "2025-06-18"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("polling"),
        ["--no-auth", "--catalog", "conformance"],
        {"ERLMCP_SSE_KEEPALIVE_SECONDS": str(KEEPALIVE)},
    )
    yield running
    running.stop()


def open_session(server: RunningServer, version: str) -> dict[str, str]:
    """A session at ``version``, and the headers of its later requests (as its client sends them: 2025-03-26 and
    older send no MCP-Protocol-Version)."""
    init = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    opened = httpx.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
    assert opened.json()["result"]["protocolVersion"] == version
    headers = {"Accept": "application/json, text/event-stream", "Mcp-Session-Id": opened.headers["mcp-session-id"]}
    return headers | ({"MCP-Protocol-Version": version} if version >= "2025-06-18" else {})


def call(server: RunningServer, headers: dict[str, str], name: str, arguments: dict[str, object]) -> httpx.Response:
    message = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    only_streams = {**headers, "Accept": "text/event-stream"}  # the answer is an event stream, whatever the tool sends
    return httpx.post(f"{server.url}/mcp", json=message, headers=only_streams, timeout=10)


def blocks(body: str) -> list[str]:
    """The blocks an SSE parser dispatches: text up to each blank line (the end of the body excluded)."""
    return [block for block in body.split("\n\n")[:-1] if block]


@pytest.mark.parametrize("version", OLDER)
def test_an_older_session_gets_no_priming_event_and_no_retry_hint(server: RunningServer, version: str) -> None:
    streamed = call(server, open_session(server, version), "test_tool_with_progress", {})
    seen = events(streamed.text)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert seen[0][1] is not None, f"the first event has no data (a priming event): {streamed.text[:200]!r}"
    assert all(message is not None for _, message in seen)
    assert "retry:" not in streamed.text
    last = seen[-1][1]
    assert last is not None
    assert last["id"] == 5


@pytest.mark.parametrize("version", OLDER)
def test_an_older_session_gets_its_answer_on_the_stream_it_called_on(server: RunningServer, version: str) -> None:
    # test_reconnection asks to end its stream mid-call: only a client that polls comes back for the rest.
    streamed = call(server, open_session(server, version), "test_reconnection", {})
    messages = [message for _, message in events(streamed.text) if message is not None]
    assert [m["params"]["data"] for m in messages if m.get("method") == "notifications/message"] == [
        "Before disconnect",
        "After reconnect",
    ]
    assert messages[-1]["result"]["content"][0]["text"] == "Reconnection test completed"


@pytest.mark.parametrize("version", [*OLDER, "2025-11-25"])
def test_keep_alives_never_make_an_event_a_client_would_dispatch(server: RunningServer, version: str) -> None:
    # A keep-alive comment followed by a blank line is dispatched as an empty "message" by parsers that remember the
    # last event id across events (httpx-sse, which mcp < 1.23 feeds to its JSON parser): no blank line after it.
    headers = open_session(server, version)
    body = asyncio.run(quiet_get_stream(server, headers))
    assert ": keep-alive" in body
    dispatched = blocks(body)
    if version == "2025-11-25":
        dispatched = dispatched[1:]  # the priming event, empty by design: SEP-1699 clients skip it
    assert dispatched, body
    assert all("\ndata: {" in "\n" + block for block in dispatched), body


async def quiet_get_stream(server: RunningServer, headers: dict[str, str]) -> str:
    """What the session's GET stream carries over a quiet spell, a list change, and another quiet spell."""
    received: list[str] = []

    async def read(stream: httpx.Response) -> None:
        async for text in stream.aiter_text():
            received.append(text)

    stream_headers = {**headers, "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/mcp", headers=stream_headers) as stream,
    ):
        reader = asyncio.create_task(read(stream))
        await asyncio.sleep(5 * KEEPALIVE)
        change = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                  "params": {"name": "test_trigger_tool_change", "arguments": {}}}  # fmt: skip
        assert (await client.post("/mcp", json=change, headers=headers)).status_code == 200
        await asyncio.sleep(5 * KEEPALIVE)
        reader.cancel()
    return "".join(received)


def test_a_2025_11_25_session_is_primed_and_polled(server: RunningServer) -> None:
    streamed = call(server, open_session(server, "2025-11-25"), "test_reconnection", {})
    seen = events(streamed.text)
    assert seen[0][0] is not None  # the priming event: an id to resume from ...
    assert seen[0][1] is None  # ... and no data
    assert "retry: " in streamed.text
    # The stream ends after "Before disconnect", before the response: the client resumes for the rest.
    assert [m.get("method") for _, m in seen[1:] if m] == ["notifications/message"]
