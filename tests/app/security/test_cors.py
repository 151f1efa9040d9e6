"""CORS for browser MCP clients: allowed origins get preflights answered and can read the session header."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import start_server

pytestmark = pytest.mark.slow
APP = "https://app.example.test"
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


def test_an_allowed_origin_gets_its_preflight_and_can_read_the_session_header(tmp_path: Path) -> None:
    server = start_server(tmp_path, ["--no-auth"], env={"ERLMCP_CORS_ORIGINS": APP})
    try:
        url = f"{server.url}/mcp"
        asks = {"Origin": APP, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, mcp-session-id"}  # fmt: skip
        preflight = httpx.options(url, headers=asks)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "mcp-session-id" in preflight.headers["access-control-allow-headers"].lower()
        opened = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT},
                            headers={"Origin": APP, "Accept": "application/json, text/event-stream"})  # fmt: skip
        assert opened.status_code == 200
        assert opened.headers["access-control-allow-origin"] == APP
        assert "mcp-session-id" in opened.headers["access-control-expose-headers"].lower()
        other = httpx.options(url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert other.status_code == 400  # a preflight from an origin not allowed gets no CORS grant
        assert "access-control-allow-origin" not in other.headers
        refused = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                             headers={"Origin": "https://evil.example"})  # fmt: skip
        assert refused.status_code == 403
    finally:
        server.stop()
