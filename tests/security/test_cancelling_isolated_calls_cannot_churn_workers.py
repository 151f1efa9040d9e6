"""A key that cancels its process-isolated tool calls in a loop cannot make the server restart workers without bound.

A cancelled call used to kill its worker at once, and the next call started a fresh one (about 54 ms of CPU each):
the outside review cancelled in a loop and kept a core busy starting workers. Now each key may cause a few such
restarts a minute (``ERLMCP_TOOL_CANCEL_RESTARTS_PER_MINUTE``, 10 by default); past that, a cancelled call is
abandoned: its worker finishes it (or is killed at the tool's timeout) and its result is thrown away. Other keys
keep their own allowance, and the server keeps answering.

Worker restarts are counted from the server's log: one "tool worker started" record, with its pid, per worker.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import KEYS, ChartServer, serve_as_chart
from tests.sse import response_message

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RESTARTS_PER_MINUTE = 10  # the documented default of ERLMCP_TOOL_CANCEL_RESTARTS_PER_MINUTE
TWIN_ADMIN = {**KEYS, "admin2": ("*", "admin2-key-0123456789abcdef")}
FUNCTION = "tests.security.isolated_functions:mark_and_sleep"
CATALOG = f"""
tools:
  - {{name: nap, description: Marks its start then sleeps in a worker., kind: python, function: "{FUNCTION}",
     isolation: process}}
"""
VERSION = "2025-11-25"
NAP_SECONDS = 0.5  # how long an abandoned call keeps its worker
_ids = itertools.count(100)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    catalog = tmp_path_factory.mktemp("cancel-catalog") / "catalog.yaml"
    catalog.write_text(CATALOG)
    running = serve_as_chart(tmp_path_factory, "cancel", args=["--catalog", str(catalog), "--tool-workers", "1"],
                             keys=TWIN_ADMIN)  # fmt: skip
    yield running
    running.stop()


class Session:
    """A handshake-era session of one key over streamable HTTP."""

    def __init__(self, server: ChartServer, key: str) -> None:
        self.server = server
        self.headers = server.headers(key, **{"MCP-Protocol-Version": VERSION})
        hello = {
            "protocolVersion": VERSION,
            "capabilities": {},
            "clientInfo": {"name": "security-test", "version": "1"},
        }
        opened = self.post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
        assert opened.status_code == 200, opened.text
        self.headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        assert self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}).status_code == 202

    def post(self, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
        return httpx.post(self.server.mcp, headers=self.headers, json=body, timeout=timeout)

    def nap(self, marker: Path, seconds: float = NAP_SECONDS) -> str:
        body = {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call",
                "params": {"name": "nap", "arguments": {"marker": str(marker), "seconds": seconds}}}  # fmt: skip
        response = self.post(body)
        return str(response_message(response.headers["content-type"], response.text)["result"]["content"][0]["text"])

    def nap_and_cancel(self, marker: Path, seconds: float = 60) -> None:
        """Call ``nap`` and cancel it (notifications/cancelled) once it is running in its worker."""
        request_id = next(_ids)
        body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                "params": {"name": "nap", "arguments": {"marker": str(marker), "seconds": seconds}}}  # fmt: skip
        caller = threading.Thread(target=lambda: self.post(body, timeout=90), daemon=True)
        caller.start()
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the call never reached a worker"
            time.sleep(0.02)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": request_id, "reason": "changed my mind"}}  # fmt: skip
        assert self.post(cancel).status_code == 202
        caller.join(30)
        assert not caller.is_alive(), "the cancelled call was never answered or closed"


def workers_started(server: ChartServer) -> list[int]:
    """The pids of the tool workers the server started so far, in order."""
    return [int(r["pid"]) for r in server.log_records() if r.get("message") == "tool worker started"]


def test_cancelling_in_a_loop_restarts_workers_only_within_the_keys_allowance(
    server: ChartServer, tmp_path: Path
) -> None:
    admin = Session(server, "admin")
    first = admin.nap(tmp_path / "warm", seconds=0)  # a worker exists
    assert workers_started(server) == [int(first)]

    started = time.monotonic()
    cancels = 3 * RESTARTS_PER_MINUTE
    for attempt in range(cancels):
        admin.nap_and_cancel(tmp_path / f"admin-{attempt}", seconds=NAP_SECONDS)
    elapsed = time.monotonic() - started
    restarts = len(workers_started(server)) - 1

    # The allowance, plus what it refilled while the loop ran; without a bound every cancel was a restart.
    allowed = RESTARTS_PER_MINUTE + math.ceil(elapsed * RESTARTS_PER_MINUTE / 60)
    assert restarts <= allowed < cancels, f"{restarts} worker restarts for {cancels} cancels in {elapsed:.1f} s"

    # The server still serves that key: the abandoned calls left a working worker behind.
    assert admin.nap(tmp_path / "after", seconds=0).isdigit()


def test_another_keys_cancel_still_stops_its_own_call_at_once(server: ChartServer, tmp_path: Path) -> None:
    admin = Session(server, "admin")
    for attempt in range(2 * RESTARTS_PER_MINUTE):  # spend admin's allowance (whatever the previous test left)
        admin.nap_and_cancel(tmp_path / f"spend-{attempt}", seconds=NAP_SECONDS)
    before = workers_started(server)

    other_admin = Session(server, "admin2")
    marker = tmp_path / "admin2"
    other_admin.nap_and_cancel(marker, seconds=60)
    busy = int(marker.read_text())
    deadline = time.monotonic() + 20
    while busy not in gone_workers(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy in gone_workers(server), "admin2's cancelled call kept running in its worker"
    assert len(workers_started(server)) <= len(before) + 1
    assert other_admin.nap(tmp_path / "admin2-after", seconds=0).isdigit()


def gone_workers(server: ChartServer) -> set[int]:
    """The started workers that no longer run."""
    return {pid for pid in workers_started(server) if not Path(f"/proc/{pid}").exists() or zombie(pid)}


def zombie(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
