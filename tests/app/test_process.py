"""`python -m app` as a real process: the official MCP SDK client, start-up refusals, logs and shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from tests.conftest import ROOT, RunningServer, start_server

pytestmark = pytest.mark.slow
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


def test_the_official_mcp_sdk_client_lists_and_calls_echo(tmp_path: Path) -> None:
    server = start_server(tmp_path, ["--no-auth"])
    try:

        async def session() -> tuple[list[str], str, bool]:
            with anyio.fail_after(20):
                async with Client(f"{server.url}/mcp") as client:
                    tools = await client.list_tools()
                    called = await client.call_tool("echo", {"text": "from the sdk"})
                    return [tool.name for tool in tools.tools], called.content[0].text, called.is_error  # type: ignore[union-attr]

        names, text, is_error = anyio.run(session)
    finally:
        assert server.stop() == 0
    assert (names[0], text, is_error) == ("echo", "from the sdk", False)
    assert "add" in names


def test_without_keys_or_no_auth_the_server_refuses_to_start_and_says_why() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--port", "0", "--metrics-port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--api-key-file" in result.stderr


def test_sigterm_stops_the_server_cleanly(server: RunningServer) -> None:
    assert server.stop() == 0


def test_logs_are_json_lines_in_cloud_logging_shape(server: RunningServer) -> None:
    headers = {"Authorization": "Bearer test-key-0123456789abcdef"}
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    opened = httpx.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                   "params": init}, headers=headers)  # fmt: skip
    headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
    httpx.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=headers)
    server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert all({"severity", "message", "time"} <= set(line) for line in lines)
    access = [line for line in lines if line["message"] == "request"]
    assert [line["httpRequest"]["status"] for line in access] == [200, 200]
    assert [line["mcp_method"] for line in access] == ["initialize", "ping"]
    assert "test-key-0123456789abcdef" not in server.log.read_text()


def test_with_erlmcp_access_log_false_requests_write_no_access_line(tmp_path: Path, api_key_file: Path) -> None:
    server = start_server(tmp_path, ["--api-key-file", str(api_key_file), "--log-format", "json"],
                          {"ERLMCP_ACCESS_LOG": "false"})  # fmt: skip
    headers = {"Authorization": "Bearer test-key-0123456789abcdef"}
    try:
        answered = httpx.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                         "params": INIT}, headers=headers)  # fmt: skip
    finally:
        assert server.stop() == 0
    assert answered.status_code == 200
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert [line["message"] for line in lines if line["message"] in ("starting", "request")] == ["starting"]


def test_the_server_runs_on_uvloop_and_says_so_in_its_start_line(server: RunningServer) -> None:
    server.stop()
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    (starting,) = [line for line in lines if line["message"] == "starting"]
    assert starting["event_loop"] == "uvloop"


def test_metrics_are_served_on_their_own_port_only(server: RunningServer) -> None:
    assert httpx.get(server.metrics_url).status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 404


def test_a_taken_port_fails_start_up_with_exit_1_and_no_traceback(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app", "--no-auth", "--port", str(port), "--metrics-port", "0"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "address already in use" in result.stderr.lower()


def test_after_sigterm_the_server_reports_unready_keeps_serving_then_exits(tmp_path: Path) -> None:
    running = start_server(tmp_path, ["--no-auth", "--drain-seconds", "2"])
    running.process.send_signal(signal.SIGTERM)
    try:
        wait_status(f"{running.url}/readyz", 503)
        assert httpx.get(f"{running.url}/livez").status_code == 200
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        opened = httpx.post(f"{running.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                        "params": init})  # fmt: skip
        assert opened.json()["result"]["protocolVersion"] == "2025-11-25"
        assert running.process.wait(timeout=15) == 0
    finally:
        running.stop()


def wait_status(url: str, status: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(url).status_code == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"{url} never answered {status}")


def test_an_abandoned_session_is_released_after_its_idle_time_even_when_no_other_traffic_comes(
    tmp_path: Path,
) -> None:
    running = start_server(tmp_path, ["--no-auth"], {"ERLMCP_SESSION_IDLE_SECONDS": "1"})
    try:
        init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        for number in range(3):  # three clients that vanish without DELETE
            opened = httpx.post(f"{running.url}/mcp", json={"jsonrpc": "2.0", "id": number, "method": "initialize",
                                                            "params": init})  # fmt: skip
            assert opened.status_code == 200
        assert sessions_active(running) == 3
        deadline = time.monotonic() + 10
        while sessions_active(running) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sessions_active(running) == 0
    finally:
        running.stop()


def sessions_active(server: RunningServer) -> float:
    for line in httpx.get(server.metrics_url).text.splitlines():
        if line.startswith("mcp_sessions_active "):
            return float(line.split()[1])
    raise AssertionError("no mcp_sessions_active")
