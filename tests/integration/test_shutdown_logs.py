"""SIGTERM to a real server under load, run as the chart runs it (an API key, JSON logs at INFO): after it exits,
its log holds an access line for every request that got an answer, although the log's sink held them in its
buffer when the signal came (its flush interval is set far longer than the test)."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import RunningServer, start_server
from tests.stateless import META

pytestmark = pytest.mark.slow

KEY = "test-key-0123456789abcdef"
DRAIN_SECONDS = 1.0
SHUTDOWN_SECONDS = 6.0
CLIENT_TIMEOUT = 20.0
CATALOG = """
tools:
  - {name: stamp, description: Sleeps on a thread then says when., kind: python,
     function: "tests.app.runtime.functions:stamp"}
  - {name: echo, description: Echoes., builtin: echo}
"""


class Answered:
    """The X-Request-IDs of the requests that got an HTTP answer (whatever its status)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.lock = threading.Lock()

    def add(self, request_id: str) -> None:
        with self.lock:
            self.ids.add(request_id)


def call(client: httpx.Client, url: str, request_id: str, tool: str, arguments: dict[str, object]) -> bool:
    """One tools/call with ``request_id`` as its X-Request-ID; whether it got an answer."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool,
               "Authorization": f"Bearer {KEY}", "X-Request-ID": request_id}  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments,
                                                                          "_meta": META}}  # fmt: skip
    try:
        client.post(url, headers=headers, content=orjson.dumps(body), timeout=CLIENT_TIMEOUT)
    except httpx.TransportError:
        return False  # refused, reset or closed unanswered: no answer, so no line is owed
    return True


def load(server: RunningServer, worker: int, answered: Answered, stop: threading.Event) -> None:
    with httpx.Client() as client:
        for number in itertools.count():
            if stop.is_set():
                return
            request_id = f"load-{worker}-{number}"
            if call(client, f"{server.url}/mcp", request_id, "echo", {"text": request_id}):
                answered.add(request_id)
            elif server.process.poll() is not None:
                return


def access_ids(log: Path) -> list[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [line["requestId"] for line in lines if line["message"] == "request" and "requestId" in line]


def test_sigterm_under_load_leaves_an_access_line_for_every_answered_request(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"{KEY}\n")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    args = ["--api-key-file", str(keys), "--log-format", "json", "--log-level", "INFO", "--catalog", str(catalog),
            "--drain-seconds", str(DRAIN_SECONDS)]  # fmt: skip
    env = {"ERLMCP_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_SECONDS), "ERLMCP_LOG_FLUSH_SECONDS": "600"}
    server = start_server(tmp_path, args, env)
    answered, stop = Answered(), threading.Event()
    workers = [threading.Thread(target=load, args=(server, n, answered, stop)) for n in range(6)]
    slow: list[bool] = []
    in_flight = threading.Thread(target=lambda: slow.append(call(httpx.Client(), f"{server.url}/mcp", "slow",
                                                                 "stamp", {"seconds": 2.0})))  # fmt: skip
    try:
        with httpx.Client() as client:
            assert call(client, f"{server.url}/mcp", "first", "echo", {"text": "first"})
        time.sleep(0.5)  # the first line is in the sink by now, and the sink waits its (long) interval
        assert "first" not in access_ids(server.log), "the log is not buffered: this test would prove nothing"
        for thread in workers:
            thread.start()
        time.sleep(1.0)
        in_flight.start()
        time.sleep(0.3)  # the slow call is in flight when the signal comes
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=DRAIN_SECONDS + SHUTDOWN_SECONDS + 10)
        stop.set()
        for thread in (*workers, in_flight):
            thread.join(CLIENT_TIMEOUT + 5)
    finally:
        stop.set()
        server.stop()
    logged = access_ids(server.log)
    answered.add("first")
    if slow == [True]:
        answered.add("slow")
    assert code == 0
    assert slow == [True], "the call in flight at SIGTERM got no answer"
    assert len(answered.ids) > 50, len(answered.ids)
    assert sorted(answered.ids - set(logged)) == [], f"{len(answered.ids - set(logged))} answered, not logged"
    assert len(logged) == len(set(logged)), "a request was logged twice"
