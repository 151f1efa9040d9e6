"""/metrics of a real server after real traffic: the families operators and dashboards read exist, with bounded
labels, and move by exactly what the traffic did."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from websockets.sync.client import connect

from tests.conftest import ROOT, RunningServer, start_server

pytestmark = pytest.mark.slow

KEY = "metrics-key-0123456789abcdef"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25", "Authorization": f"Bearer {KEY}"}  # fmt: skip
HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    running = start_server(tmp_path, ["--api-key-file", str(keys)],
                           env={"ERLMCP_RATE_LIMIT_PER_SECOND": "0.01", "ERLMCP_RATE_LIMIT_BURST": "40"})  # fmt: skip
    yield running
    running.stop()


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO}


def scrape(server: RunningServer) -> dict[str, list[Sample]]:
    text = httpx.get(server.metrics_url).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families: dict[str, list[Sample]], sample: str, **labels: str) -> float:
    found = [s.value for name in families for s in families[name]
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]  # fmt: skip
    return sum(found)


def rpc(client: httpx.Client, server: RunningServer, session: str, method: str, params: dict[str, object]) -> None:
    body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params}
    client.post(f"{server.url}/mcp", headers={**HEADERS, "Mcp-Session-Id": session}, json=body).raise_for_status()


def test_traffic_moves_each_family_by_what_it_did(server: RunningServer) -> None:
    before = scrape(server)
    with httpx.Client(timeout=10) as client:
        opened = client.post(f"{server.url}/mcp", headers=HEADERS, json=INITIALIZE)
        session = opened.headers["mcp-session-id"]
        during = scrape(server)
        rpc(client, server, session, "tools/call", {"name": "echo", "arguments": {"text": "a"}})
        rpc(client, server, session, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
        rpc(client, server, session, "tools/call", {"name": "divide", "arguments": {"a": 1, "b": 0}})
        rpc(client, server, session, "tools/list", {})
        unauthenticated = client.post(f"{server.url}/mcp?session=raw-path-secret", json={})
        client.delete(f"{server.url}/mcp", headers={**HEADERS, "Mcp-Session-Id": session})
    after = scrape(server)

    assert unauthenticated.status_code == 401
    assert value(during, "mcp_sessions_active") == value(before, "mcp_sessions_active") + 1
    assert value(after, "mcp_sessions_active") == value(before, "mcp_sessions_active")

    def grew(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    assert grew("mcp_requests_total", method="tools/call") == 3
    assert grew("mcp_requests_total", method="initialize", outcome="ok") == 1
    assert grew("mcp_tool_calls_total", tool="echo", outcome="ok") == 1
    assert grew("mcp_tool_calls_total", tool="divide", outcome="error") == 1
    assert grew("mcp_tool_duration_seconds_count", tool="add") == 1
    assert grew("mcp_request_duration_seconds_count", method="tools/list") == 1
    assert grew("http_requests_total", method="POST", code="200") >= 5
    assert grew("http_requests_total", method="POST", code="401") == 1
    assert grew("http_request_duration_seconds_count", method="DELETE") == 1
    assert grew("mcp_auth_failures_total") == 1
    assert value(after, "process_resident_memory_bytes") > 10 * 1024 * 1024
    assert value(after, "erlmcp_asyncio_tasks") >= 1
    assert "erlmcp_tool_workers" in after
    assert value(after, "erlmcp_build_info") == 1


def test_the_build_info_names_the_replica_so_a_scraper_behind_a_service_tells_replicas_apart(
    server: RunningServer,
) -> None:
    [build] = scrape(server)["erlmcp_build_info"]
    assert build.labels["replica"] == f"{socket.gethostname()}/{server.process.pid}"


def test_an_open_websocket_is_counted_while_it_is_open(server: RunningServer) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, subprotocols=["mcp"]):  # type: ignore[list-item]
        deadline = time.monotonic() + 5
        while value(scrape(server), "mcp_connections_active", transport="websocket") != 1:
            assert time.monotonic() < deadline, "the open WebSocket was never counted"
            time.sleep(0.05)
    deadline = time.monotonic() + 5
    while value(scrape(server), "mcp_connections_active", transport="websocket") != 0:
        assert time.monotonic() < deadline, "the closed WebSocket is still counted"
        time.sleep(0.05)


def test_requests_over_the_budget_are_counted_as_rate_limited(server: RunningServer) -> None:
    before = value(scrape(server), "mcp_rate_limited_total")
    with httpx.Client(timeout=10) as client:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        codes = [client.post(f"{server.url}/mcp", headers=HEADERS, json=ping).status_code for _ in range(45)]
    refused = codes.count(429)
    assert refused >= 5
    assert value(scrape(server), "mcp_rate_limited_total") - before == refused


def test_labels_stay_bounded_no_session_ids_paths_or_unknown_names(server: RunningServer) -> None:
    with httpx.Client(timeout=10) as client:
        opened = client.post(f"{server.url}/mcp", headers=HEADERS, json=INITIALIZE)
        session = opened.headers["mcp-session-id"]
        rpc(client, server, session, "tools/call", {"name": "no-such-tool-xyz", "arguments": {}})
        client.post(f"{server.url}/mcp", headers={**HEADERS, "Mcp-Session-Id": session},
                    json={"jsonrpc": "2.0", "id": 3, "method": "made/up-method-xyz"})  # fmt: skip
        client.request("BREW", f"{server.url}/coffee-path-xyz")
    text = httpx.get(server.metrics_url).text
    for leak in (session, "no-such-tool-xyz", "made/up-method-xyz", "coffee-path-xyz", "raw-path-secret", "BREW"):
        assert leak not in text
    assert 'method="(unknown)"' in text


def test_the_grafana_dashboard_reads_only_families_the_server_exposes(server: RunningServer) -> None:
    text = httpx.get(server.metrics_url).text
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "info": ("_info",)}
    exposed = {family.name + suffix for family in text_string_to_metric_families(text)
               for suffix in suffixes.get(family.type, ("",))}  # fmt: skip
    dashboard = json.loads((ROOT / "chart" / "dashboards" / "erlmcp.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for query in queries for name in re.findall(r"\b([a-z_]+)(?=\{)", query)}
    assert used, "no metric names found in the dashboard"
    assert used <= exposed, f"the dashboard reads families the server does not expose: {sorted(used - exposed)}"
