"""Overload: past its bound of requests in progress the server answers 503 with Retry-After at once, serves the
requests it admitted, and admits again as soon as they are done."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer, start_server
from tests.stateless import post

pytestmark = pytest.mark.slow

CATALOG = """
tools:
  - {name: slow, description: Sleeps., kind: python, function: "tests.app.runtime.functions:stamp"}
  - {name: echo, description: Echoes., builtin: echo}
"""


def call(server: RunningServer, name: str, arguments: dict[str, Any]) -> httpx.Response:
    return post(f"{server.url}/mcp", "tools/call", {"name": name, "arguments": arguments})


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
        shed = None
        for _ in range(200):  # until both slow calls hold their slots
            response = call(server, "echo", {"text": "x"})
            if response.status_code == 503:
                shed = response
                break
        for holder in holders:
            holder.join(30)
        after = call(server, "echo", {"text": "again"})
        metrics = httpx.get(server.metrics_url).text
    finally:
        server.stop()
    assert shed is not None, "no request was shed while two were in progress"
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["message"].startswith("Server overloaded: 2 requests in progress")
    assert [r.status_code for r in admitted] == [200, 200]
    assert all(not r.json()["result"]["isError"] for r in admitted)
    assert after.status_code == 200
    assert after.json()["result"]["content"][0]["text"] == "again"
    [family] = [f for f in text_string_to_metric_families(metrics) if f.name == "mcp_requests_shed"]
    assert sum(s.value for s in family.samples if s.name == "mcp_requests_shed_total") >= 1
