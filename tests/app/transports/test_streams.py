"""Event streams over real sockets: resuming a closed stream, cancelling a request mid-flight, GET streams."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.app.transports.conftest import open_session
from tests.conftest import RunningServer
from tests.sse import events

pytestmark = pytest.mark.slow


def test_a_stream_closed_by_the_server_resumes_from_the_last_event_id(server: RunningServer) -> None:
    headers = open_session(server)
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "test_reconnection", "arguments": {}}}
    first = httpx.post(f"{server.url}/mcp", json=call, headers=headers, timeout=10)
    seen = events(first.text)
    assert seen[0][1] is None  # the priming event: an id, no data
    assert "retry: " in first.text
    assert [m["params"]["data"] for _, m in seen[1:] if m] == ["Before disconnect"]
    last_id = seen[-1][0]
    assert last_id is not None
    resumed = httpx.get(f"{server.url}/mcp", headers={**headers, "Last-Event-ID": last_id}, timeout=10)
    rest = [m for _, m in events(resumed.text) if m]
    assert rest[0]["params"]["data"] == "After reconnect"
    assert rest[-1]["id"] == 5
    assert rest[-1]["result"]["content"][0]["text"] == "Reconnection test completed"


def test_resuming_an_unknown_stream_is_404(server: RunningServer) -> None:
    headers = open_session(server)
    response = httpx.get(f"{server.url}/mcp", headers={**headers, "Last-Event-ID": "nope-3"})
    assert response.status_code == 404


def test_notifications_cancelled_stops_a_request_in_flight(server: RunningServer) -> None:
    headers = {**open_session(server), "Accept": "application/json"}

    async def scenario() -> int:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            call = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                    "params": {"name": "slow_compute", "arguments": {"seconds": 15}}}  # fmt: skip
            pending = asyncio.create_task(client.post("/mcp", json=call, headers=headers))
            await asyncio.sleep(0.3)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77}}
            assert (await client.post("/mcp", json=cancel, headers=headers)).status_code == 202
            return (await pending).status_code

    assert asyncio.run(scenario()) == 204  # cancelled: no response is owed, and none is sent


def test_a_second_get_stream_for_the_same_session_is_409(server: RunningServer) -> None:
    headers = open_session(server)

    async def scenario() -> int:
        stream_headers = {**headers, "Accept": "text/event-stream"}
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            client.stream("GET", "/mcp", headers=stream_headers) as first,
        ):
            assert first.status_code == 200
            second = await client.get("/mcp", headers=stream_headers)
            return second.status_code

    assert asyncio.run(scenario()) == 409
