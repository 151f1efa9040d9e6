"""Replicas sharing one Redis, and handshake-era sessions over raw HTTP to them: start the replicas, open a
session, post to it, and have a server request asked on one replica and answered through another (over the
session bus)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import RunningServer, start_server
from tests.sse import events

INIT = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
        "clientInfo": {"name": "t", "version": "1"}}  # fmt: skip


def start_replicas(
    tmp_path: Path, redis_url: str, env: dict[str, str] | None = None, count: int = 2
) -> list[RunningServer]:
    """``count`` replicas of the conformance profile sharing one Redis, started side by side."""
    environment = {"ERLMCP_REDIS_URL": redis_url, "ERLMCP_LOG_FORMAT": "json", **(env or {})}
    with ThreadPoolExecutor(count) as pool:
        starting = [pool.submit(start_server, tmp_path, ["--no-auth", "--catalog", "conformance"], environment)
                    for _ in range(count)]  # fmt: skip
    return [future.result() for future in starting]


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 10) -> httpx.Response:
    """One POST to ``url``/mcp on a connection of its own (so that a round-robin proxy moves every request)."""
    sent = {"Accept": "application/json, text/event-stream", "Connection": "close", **(headers or {})}
    return httpx.post(f"{url}/mcp", json=body, headers=sent, timeout=timeout)


def open_session(url: str) -> dict[str, str]:
    """A new session's headers."""
    opened = post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
    return {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}


def sample_across(
    asking: str, answering: str, session: dict[str, str], *, request_id: int = 7, text: str = "from replica two"
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Call test_sampling through ``asking`` and answer its sampling request through ``answering``: the server
    request as the client saw it, and the tool call's response (None when either never came)."""
    call = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "test_sampling", "arguments": {"prompt": "hi"}}}  # fmt: skip
    asked: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    with (
        httpx.Client(timeout=15) as client,
        client.stream(
            "POST", f"{asking}/mcp", json=call, headers={**session, "Accept": "application/json, text/event-stream"}
        ) as stream,
    ):
        buffer = ""
        for chunk in stream.iter_text():
            buffer += chunk
            for _, message in events(buffer):
                if message and message.get("method") == "sampling/createMessage" and asked is None:
                    asked = message
                    answer = {"jsonrpc": "2.0", "id": message["id"], "result": {
                        "role": "assistant", "content": {"type": "text", "text": text}, "model": "m"}}  # fmt: skip
                    assert post(answering, answer, session).status_code == 202  # answered through the OTHER replica
                if message and message.get("id") == request_id:
                    result = message
            if result:
                break
    return asked, result
