"""Soak: a real server under steady mixed traffic for minutes (``make soak``; ``SOAK_SECONDS``, default 600).

Sessions open, work and close, stateless calls and event streams run beside them, and every few seconds the
process is sampled: resident memory, open file descriptors, asyncio tasks and live sessions. A leak shows as a
level that keeps climbing after the warm-up, so the last third of the run is compared with the first; after the
traffic stops, tasks, descriptors and sessions must come back to where they started. Deselected from ``make
test`` (marker ``soak``): its value is its length.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, start_server
from tests.sse import response_message
from tests.stateless import post

# Also slow: a run with -m "not slow" replaces the default -m "not soak", and must still leave these out.
pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(0)]

SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SAMPLE_EVERY = 5.0
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "soak", "version": "1"}}


@dataclass
class Sample:
    rss_mib: float
    fds: int
    tasks: float
    sessions: float


@dataclass
class Tally:
    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.seen[outcome] += 1


def sample(server: RunningServer) -> Sample:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) / 1024
    fds = len(os.listdir(f"/proc/{server.process.pid}/fd"))
    gauges = {f.name: sum(s.value for s in f.samples)
              for f in text_string_to_metric_families(httpx.get(server.metrics_url, timeout=10).text)}  # fmt: skip
    return Sample(rss, fds, gauges.get("erlmcp_asyncio_tasks", 0.0), gauges.get("mcp_sessions_active", 0.0))


def outcome(response: httpx.Response) -> str:
    if response.status_code in (429, 503) and "retry-after" in response.headers:
        return "retryable"
    if response.status_code == 202:
        return "ok"
    if response.status_code != 200:
        return f"http {response.status_code}"
    message = response_message(response.headers.get("content-type", ""), response.text)
    return "ok" if "result" in message else f"error {message.get('error')}"


def session_worker(server: RunningServer, tally: Tally, stop: threading.Event) -> None:
    """Open a session, call tools, read a resource, get a prompt, close it; again and again."""
    url = f"{server.url}/mcp"
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            opened = client.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
                                 headers=HEADERS)  # fmt: skip
            tally.add(outcome(opened))
            if "mcp-session-id" not in opened.headers:
                continue
            session = {**HEADERS, "Mcp-Session-Id": opened.headers["mcp-session-id"],
                       "MCP-Protocol-Version": "2025-11-25"}  # fmt: skip
            client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
            calls = [("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}),
                     ("tools/call", {"name": "echo", "arguments": {"text": "soak" * 50}}),
                     ("resources/read", {"uri": "erlmcp://help"}),
                     ("tools/list", {}), ("prompts/list", {})]  # fmt: skip
            for number, (method, params) in enumerate(calls, 1):
                body = {"jsonrpc": "2.0", "id": number, "method": method, "params": params}
                tally.add(outcome(client.post(url, json=body, headers=session)))
            tally.add("ok" if client.delete(url, headers=session).status_code in (200, 204) else "delete failed")


def stateless_worker(server: RunningServer, tally: Tally, stop: threading.Event) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            call = {"name": "multiply", "arguments": {"a": 6, "b": 7}}
            tally.add(outcome(post(f"{server.url}/mcp", "tools/call", call, client=client)))


def stream_worker(server: RunningServer, tally: Tally, stop: threading.Event) -> None:
    """Sessions that open their GET stream, hold it a moment, and drop it without a goodbye."""
    url = f"{server.url}/mcp"
    while not stop.is_set():
        with httpx.Client(timeout=30) as client:
            opened = client.post(url, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
                                 headers=HEADERS)  # fmt: skip
            tally.add(outcome(opened))
            if "mcp-session-id" not in opened.headers:
                continue
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"],
                       "MCP-Protocol-Version": "2025-11-25"}  # fmt: skip
            client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                        headers={**HEADERS, **session})  # fmt: skip
            with client.stream("GET", url, headers={"Accept": "text/event-stream", **session}) as stream:
                tally.add("ok" if stream.status_code == 200 else f"stream {stream.status_code} {stream.read()!r}")
                time.sleep(0.5)


def test_hours_of_traffic_leave_no_climbing_memory_tasks_or_descriptors(tmp_path: Path) -> None:
    server = start_server(tmp_path, ["--no-auth"], {"ERLMCP_RATE_LIMIT_PER_SECOND": "0",
                                                     "ERLMCP_INITIALIZE_PER_MINUTE": "1000000",
                                                     "ERLMCP_SESSION_IDLE_SECONDS": "30"})  # fmt: skip
    tally, stop = Tally(), threading.Event()
    workers = [threading.Thread(target=target, args=(server, tally, stop), daemon=True)
               for target in (session_worker, session_worker, stateless_worker, stream_worker)]  # fmt: skip
    try:
        idle = sample(server)
        for worker in workers:
            worker.start()
        samples: list[Sample] = []
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            time.sleep(SAMPLE_EVERY)
            samples.append(sample(server))
            assert server.process.poll() is None, "the server died"
        stop.set()
        for worker in workers:
            worker.join(60)
        time.sleep(35)  # past the idle timeout: sessions whose client vanished are gone
        rest = sample(server)
    finally:
        stop.set()
        server.stop()
    failures = {k: v for k, v in tally.seen.items() if k not in ("ok", "retryable")}
    assert failures == {}, tally.seen
    assert tally.seen["ok"] > SECONDS * 20, tally.seen
    warm = samples[len(samples) // 6 :]  # the first sixth warms caches, pools and the allocator
    third = max(1, len(warm) // 3)
    first, last = warm[:third], warm[-third:]
    growth = statistics.mean(s.rss_mib for s in last) - statistics.mean(s.rss_mib for s in first)
    assert growth < 10, f"resident memory climbed {growth:.1f} MiB between the first and last third"
    assert max(s.fds for s in last) <= max(s.fds for s in first) + 20, [s.fds for s in samples]
    assert rest.tasks <= idle.tasks + 5, (idle, rest)
    assert rest.fds <= idle.fds + 5, (idle, rest)
    assert rest.sessions == 0, rest
