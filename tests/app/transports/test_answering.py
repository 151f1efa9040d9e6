"""How a POSTed request's handler meets the transport, over real sockets: a client's cancel owes no answer and
leaves the connection as it was, a handler that sends before its response turns the answer into an event stream,
and the server's own cancel at shutdown is not taken for a client's."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
import orjson
import pytest

from tests.app.transports.conftest import open_session
from tests.conftest import RunningServer, start_server
from tests.sse import events

pytestmark = pytest.mark.slow


def call(request_id: int, name: str, arguments: dict[str, object], **more: object) -> dict[str, object]:
    params = {"name": name, "arguments": arguments, **more}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


class KeepAlive:
    """One HTTP/1.1 connection, kept alive: requests one after another, answers with a Content-Length (or none)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def open(cls, server: RunningServer) -> KeepAlive:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    def post(self, message: dict[str, object], headers: dict[str, str]) -> None:
        body = orjson.dumps(message)
        lines = ["POST /mcp HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in headers.items())]  # fmt: skip
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        fields = dict(line.lower().split(": ", 1) for line in header_lines)
        body = await self._reader.readexactly(int(fields.get("content-length", "0")))
        return int(status_line.split()[1]), fields, body

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def cancellations(server: RunningServer) -> float:
    text = httpx.get(server.metrics_url).text
    found = re.search(r'^mcp_requests_cancelled_total\{transport="streamable-http"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_client_cancel_of_a_json_answer_owes_nothing_and_the_connection_serves_the_next_request(
    server: RunningServer,
) -> None:
    headers = open_session(server)
    before = cancellations(server)

    async def scenario() -> list[tuple[int, dict[str, str], bytes]]:
        connection = await KeepAlive.open(server)
        try:
            connection.post(call(77, "slow_compute", {"seconds": 15}), headers)
            await asyncio.sleep(0.3)
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 77}}
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as other:
                assert (await other.post("/mcp", json=cancel, headers=headers)).status_code == 202
            cancelled = await asyncio.wait_for(connection.answer(), 10)
            connection.post(call(78, "greet", {"name": "again"}), headers)  # the same connection, next request
            return [cancelled, await asyncio.wait_for(connection.answer(), 10)]
        finally:
            await connection.close()

    (status, _, body), (next_status, next_headers, next_body) = asyncio.run(scenario())
    assert (status, body) == (204, b"")  # no response is owed, and none is sent
    assert next_status == 200
    assert next_headers["content-type"] == "application/json"
    answer = orjson.loads(next_body)
    assert answer["id"] == 78
    assert answer["result"]["content"][0]["text"] == "Hello, again!"
    assert cancellations(server) == before + 1


def test_a_handler_that_sends_progress_then_answers_gets_one_event_stream_with_both(server: RunningServer) -> None:
    headers = open_session(server)
    message = call(9, "test_tool_with_progress", {}, _meta={"progressToken": "p-9"})
    streamed = httpx.post(f"{server.url}/mcp", json=message, headers=headers, timeout=10)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    sent = [message for _, message in events(streamed.text) if message is not None]
    progress = [m["params"]["progress"] for m in sent if m.get("method") == "notifications/progress"]
    assert progress == [0, 50, 100]
    assert sent[-1]["id"] == 9
    assert sent[-1]["result"]["content"][0]["text"] == "p-9"


def test_the_servers_cancel_at_shutdown_is_not_taken_for_a_clients(tmp_path: Path) -> None:
    """A handler still running when the shutdown's time is up is cancelled by the server: that is no client's
    cancel, so no 204 (an answer that says the client asked for none)."""
    running = start_server(tmp_path, ["--no-auth", "--catalog", "conformance", "--drain-seconds", "0"],
                           {"ERLMCP_SHUTDOWN_TIMEOUT_SECONDS": "1"})  # fmt: skip
    try:
        headers = open_session(running)

        async def scenario() -> tuple[int, dict[str, str], bytes] | None:
            connection = await KeepAlive.open(running)
            try:
                connection.post(call(5, "slow_compute", {"seconds": 30}), headers)
                await asyncio.sleep(0.3)
                running.process.send_signal(signal.SIGTERM)
                try:
                    return await asyncio.wait_for(connection.answer(), 15)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return None  # the connection closed without an answer
            finally:
                await connection.close()

        answered = asyncio.run(scenario())
        assert running.process.wait(timeout=15) is not None
    finally:
        running.stop()
    assert answered is None or answered[0] == 500, answered
