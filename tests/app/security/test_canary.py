"""A secret canary sent in credentials, headers and tool arguments never shows in the logs or the metrics."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_server

pytestmark = pytest.mark.slow
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


def test_a_canary_never_reaches_logs_or_metrics(tmp_path: Path) -> None:
    canary = f"canary-{secrets.token_hex(12)}"
    keys = tmp_path / "keys"
    keys.write_text(f"{canary}-key\n")
    server = start_server(tmp_path, ["--api-key-file", str(keys), "--log-format", "json", "--log-level", "DEBUG"])
    try:
        url = f"{server.url}/mcp"
        good = {"Authorization": f"Bearer {canary}-key", "Accept": "application/json, text/event-stream"}
        opened = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}, headers=good)
        session = {**good, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        calls = [
            {"name": "echo", "arguments": {"text": canary}},  # a secret in the arguments
            {"name": "echo", "arguments": {"text": 7, "secret": canary}},  # refused arguments
            {"name": f"no-such-tool-{canary}", "arguments": {}},  # a secret where a name should be
        ]
        for number, params in enumerate(calls, start=2):
            httpx.post(url, json={"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": params},
                       headers={**session, "X-Trace": canary})  # fmt: skip
        for wrong in ({"Authorization": f"Bearer {canary}-wrong"}, {"X-API-Key": canary}, {"Cookie": f"s={canary}"}):
            httpx.post(url, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=wrong)
        httpx.post(url, content=f'{{"jsonrpc": "2.0", "id": 10, "method": "{canary}'.encode(), headers=session)
        metrics = httpx.get(server.metrics_url).text
    finally:
        server.stop()
    log = server.log.read_text()
    # The requests were logged (with the user agent, as Cloud Logging's httpRequest has it), only not the secret.
    assert "tools/call" in log
    assert canary not in log
    assert canary not in metrics
