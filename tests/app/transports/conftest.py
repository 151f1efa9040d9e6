"""What the transport tests that talk to a real server share: ``server``, a real server of the conformance
catalogue without auth (one per test module), and :func:`open_session`, a 2025-11-25 session on it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningServer, start_server

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    running = start_server(folder, ["--no-auth", "--catalog", "conformance"])
    yield running
    running.stop()


def open_session(server: RunningServer) -> dict[str, str]:
    """initialize; the headers every later request of the session carries (JSON or an event stream accepted)."""
    opened = httpx.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize",
                                                   "params": INIT})  # fmt: skip
    return {
        "Accept": "application/json, text/event-stream",
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "MCP-Protocol-Version": "2025-11-25",
    }
