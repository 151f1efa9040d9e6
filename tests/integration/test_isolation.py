"""Tools that crash, allocate without bound or never return, run isolated in a real server: each caller gets a tool
error, every other concurrent call completes, and the server's own memory stays where it was."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, rss_mib, start_server
from tests.sse import response_message
from tests.stateless import post

pytestmark = pytest.mark.slow

FUNCTIONS = "tests.app.runtime.functions"
CATALOG = f"""
tools:
  - {{name: exit_now, description: Exits its process., kind: python, function: "{FUNCTIONS}:exit_now",
     isolation: process}}
  - {{name: exhaust_memory, description: Allocates until it cannot., kind: python,
     function: "{FUNCTIONS}:exhaust_memory", isolation: process}}
  - {{name: sleep_forever, description: Never returns., kind: python, function: "{FUNCTIONS}:sleep_forever",
     isolation: process, timeoutSeconds: 2}}
  - {{name: segfault, description: Crashes the interpreter., kind: python, function: "{FUNCTIONS}:segfault",
     isolation: process}}
  - {{name: add, description: Adds in a worker., kind: python, function: "{FUNCTIONS}:add", isolation: process}}
  - {{name: add_later, description: Adds on the event loop., kind: python, function: "{FUNCTIONS}:add_later"}}
  - {{name: echo, description: Echoes., builtin: echo}}
"""


def call(server: RunningServer, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = post(f"{server.url}/mcp", "tools/call", {"name": name, "arguments": arguments},
                                  timeout=60).json()["result"]  # fmt: skip
    return result


def test_a_crash_a_runaway_allocation_and_a_hang_each_cost_only_their_own_call(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    server = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog), "--tool-workers", "4",
                                     "--tool-worker-memory-mb", "256"])  # fmt: skip
    try:
        call(server, "add", {"a": 1, "b": 1})  # warm: a worker exists, the server's memory has settled
        for _ in range(20):
            call(server, "echo", {"text": "warm"})
        baseline = rss_mib(server.process.pid) * 1024

        results: dict[str, dict[str, Any]] = {}

        def run(key: str, name: str, arguments: dict[str, Any]) -> None:
            results[key] = call(server, name, arguments)

        calls = [("exit", "exit_now", {"code": 3}), ("memory", "exhaust_memory", {}), ("hang", "sleep_forever", {}),
                 ("segfault", "segfault", {}), ("add", "add", {"a": 2, "b": 3}),
                 ("loop", "add_later", {"a": 4, "b": 5}), ("echo", "echo", {"text": "still here"})]  # fmt: skip
        threads = [threading.Thread(target=run, args=c) for c in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        after = [call(server, "add", {"a": 20, "b": 22}) for _ in range(4)]  # replaced workers serve again
        grown_kib = rss_mib(server.process.pid) * 1024 - baseline
    finally:
        server.stop()

    def text(key: str) -> str:
        return str(results[key]["content"][0]["text"])

    assert results["exit"]["isError"]
    assert "exit code 3" in text("exit")
    assert results["memory"]["isError"]
    assert "ran out of memory (limit 256 MB)" in text("memory")
    assert results["hang"]["isError"]
    assert "timed out after 2 s" in text("hang")
    assert results["segfault"]["isError"]
    assert "SIGSEGV" in text("segfault")
    assert (text("add"), text("loop"), text("echo")) == ("5", "9", "still here")
    assert all(not r["isError"] and r["content"][0]["text"] == "42" for r in after)
    assert grown_kib < 30 * 1024, f"the server grew by {grown_kib} KiB"


def workers_of(pid: int) -> set[int]:
    """The server's tool worker processes (its children running app.runtime.worker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and b"app.runtime.worker" in command:
            found.add(int(entry.name))
    return found


def test_notifications_cancelled_kills_the_worker_of_the_call_it_names(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.replace("timeoutSeconds: 2", "timeoutSeconds: 120"))
    server = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog), "--tool-workers", "1",
                                     "--tool-timeout", "120"])  # fmt: skip
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-11-25"}  # fmt: skip
    url = f"{server.url}/mcp"
    try:
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        opened = httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                        "params": hello})  # fmt: skip
        headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        httpx.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        answered: list[httpx.Response] = []
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "sleep_forever", "arguments": {}}}
        caller = threading.Thread(target=lambda: answered.append(httpx.post(url, headers=headers, json=call,
                                                                            timeout=60)))  # fmt: skip
        caller.start()
        deadline = time.monotonic() + 20
        while not (busy := workers_of(server.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy, "no worker process started"
        time.sleep(0.5)  # the call is in the worker now

        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "t"}}
        assert httpx.post(url, headers=headers, json=cancel).status_code == 202
        caller.join(30)

        deadline = time.monotonic() + 10
        while workers_of(server.process.pid) & busy and time.monotonic() < deadline:
            time.sleep(0.05)
        still = workers_of(server.process.pid) & busy
        after = call_tool_in_session(url, headers)
    finally:
        server.stop()
    assert not caller.is_alive()
    assert still == set(), "the cancelled call's worker is still running"
    assert after == "5"


def call_tool_in_session(url: str, headers: dict[str, str]) -> str:
    body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 2, "b": 3}}}
    response = httpx.post(url, headers=headers, json=body, timeout=60)
    return str(response_message(response.headers["content-type"], response.text)["result"]["content"][0]["text"])
