"""Overload: past its bound of requests in progress the server answers 503 with Retry-After at once, serves the
requests it admitted, and admits again as soon as they are done."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, rss_mib, start_server
from tests.stateless import post

pytestmark = pytest.mark.slow

CATALOG = """
tools:
  - {name: slow, description: Sleeps., kind: python, function: "tests.app.runtime.functions:stamp"}
  - {name: echo, description: Echoes., builtin: echo}
"""


SLOW_CALL = {"name": "slow", "arguments": {"seconds": 0.2}}


def call(server: RunningServer, name: str, arguments: dict[str, Any]) -> httpx.Response:
    return post(f"{server.url}/mcp", "tools/call", {"name": name, "arguments": arguments})


def in_flight(server: RunningServer) -> float:
    """The server's HTTP requests in progress, from its metrics listener (which that gauge does not count)."""
    families = text_string_to_metric_families(httpx.get(server.metrics_url).text)
    return next(s.value for f in families if f.name == "http_requests_in_flight" for s in f.samples)


def test_past_its_bound_the_server_sheds_at_once_and_serves_what_it_admitted(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    server = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog)],
                          env={"ERLMCP_MAX_CONCURRENT_REQUESTS": "2", "ERLMCP_RATE_LIMIT_PER_SECOND": "0"})  # fmt: skip
    try:
        admitted: list[httpx.Response] = []
        holders = [threading.Thread(target=lambda: admitted.append(call(server, "slow", {"seconds": 1.5})))
                   for _ in range(2)]  # fmt: skip
        for holder in holders:
            holder.start()
        # Probe only once both slow calls hold a slot (an echo sent earlier could take the second slot itself and
        # have a slow call shed instead: the test then saw one slow call in progress and no echo shed).
        deadline = time.monotonic() + 10
        while in_flight(server) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        shed = call(server, "echo", {"text": "x"})
        for holder in holders:
            holder.join(30)
        after = call(server, "echo", {"text": "again"})
        metrics = httpx.get(server.metrics_url).text
    finally:
        server.stop()
    assert shed.status_code == 503, shed.text
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["message"].startswith("Server overloaded: 2 requests in progress")
    assert [r.status_code for r in admitted] == [200, 200]
    assert all(not r.json()["result"]["isError"] for r in admitted)
    assert after.status_code == 200
    assert after.json()["result"]["content"][0]["text"] == "again"
    [family] = [f for f in text_string_to_metric_families(metrics) if f.name == "mcp_requests_shed"]
    assert sum(s.value for s in family.samples if s.name == "mcp_requests_shed_total") >= 1


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def offer(server: RunningServer, rate: float, seconds: float) -> list[tuple[int, float]]:
    """Open-loop load: a tools/call of ``slow`` (0.2 s) every 1/``rate`` s, whatever the answers; (status, s)."""
    results: list[tuple[int, float]] = []
    clients: list[httpx.Client] = []
    lock = threading.Lock()
    local = threading.local()

    def one() -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
            with lock:
                clients.append(client)
        started = time.monotonic()
        response = post(f"{server.url}/mcp", "tools/call", SLOW_CALL, client=client)
        with lock:
            results.append((response.status_code, time.monotonic() - started))

    with ThreadPoolExecutor(max_workers=int(rate)) as pool:
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            time.sleep(max(0.0, start + n / rate - time.monotonic()))
            pool.submit(one)
    for client in clients:
        client.close()
    return results


def test_at_twice_its_capacity_the_excess_is_shed_at_once_and_the_served_keep_their_latency(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    server = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog)],
                          env={"ERLMCP_MAX_CONCURRENT_REQUESTS": "4", "ERLMCP_RATE_LIMIT_PER_SECOND": "0"})  # fmt: skip
    try:
        capacity = 4 / 0.2  # four slots, each held 0.2 s: 20 calls a second
        baseline = offer(server, capacity * 0.5, 3.0)  # half load: nothing waits, nothing is shed
        memory_before = rss_mib(server.process.pid)
        overload = offer(server, capacity * 2, 4.0)
        memory_after = rss_mib(server.process.pid)
    finally:
        server.stop()
    assert {status for status, _ in baseline} == {200}
    base = [seconds for _, seconds in baseline]
    served = [seconds for status, seconds in overload if status == 200]
    shed = [seconds for status, seconds in overload if status == 503]
    assert {status for status, _ in overload} <= {200, 503}
    assert len(shed) > len(overload) / 4, f"{len(shed)} of {len(overload)} shed at twice the capacity"
    assert len(served) > 0.7 * capacity * 4.0, f"only {len(served)} served in 4 s; capacity is {capacity}/s"
    assert percentile(shed, 0.95) < 0.050, f"p95 of the refusals: {percentile(shed, 0.95) * 1000:.0f} ms"
    # The served keep their latency: no queue forms in front of the slots (the median call takes its 0.2 s).
    assert percentile(served, 0.5) < 1.5 * percentile(base, 0.5)
    assert percentile(served, 0.95) < 2.0 * percentile(base, 0.95)
    assert memory_after - memory_before < 20, f"memory grew {memory_after - memory_before:.0f} MiB under overload"
