"""The server the security tests attack: a real ``python -m app`` process configured as the chart ships it.

The chart's settings (chart/values.yaml): API keys on, JSON logs at INFO, 20 requests a second with a burst of
100 per client. Three keys, as the outside review used them: ``admin`` may use every tool, ``limited`` and
``other`` only ``echo``. Each test module starts its own server (module scope) through :func:`serve_as_chart`, with
the catalogue and extra settings its finding needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest

from tests.conftest import RunningServer, free_port, start_server

# The keys of the review; long enough for the key file's 16-character minimum.
KEYS: dict[str, tuple[str, str]] = {
    "admin": ("*", "admin-key-0123456789abcdef"),
    "limited": ("tools:echo", "limited-key-0123456789abcdef"),
    "other": ("tools:echo", "other-key-0123456789abcdef"),
}
# The chart's defaults (chart/values.yaml): what a user runs.
CHART_ENV = {
    "ERLMCP_LOG_LEVEL": "INFO",
    "ERLMCP_LOG_FORMAT": "json",
    "ERLMCP_RATE_LIMIT_PER_SECOND": "20",
    "ERLMCP_RATE_LIMIT_BURST": "100",
}
ACCEPT = "application/json, text/event-stream"


@dataclass
class ChartServer:
    """A running server with the review's keys, its TCP port and its working directory (a
    :class:`tests.doors.Reachable`: every door's peer reaches it)."""

    running: RunningServer
    tcp_port: int
    root: Path
    keys: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(KEYS))
    env: dict[str, str] = field(default_factory=dict)  # the ERLMCP_* settings (a stdio process gets the same)

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def mcp(self) -> str:
        return f"{self.running.url}/mcp"

    def key(self, name: str) -> str:
        return self.keys[name][1]

    def headers(self, name: str | None, /, **extra: str) -> dict[str, str]:
        """The headers of a POST to /mcp by the key ``name`` (None: no credentials)."""
        headers = {"Accept": ACCEPT, "Content-Type": "application/json", **extra}
        if name is not None:
            headers["Authorization"] = f"Bearer {self.key(name)}"
        return headers

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log record the server wrote so far (lines that are not JSON are returned as ``{"raw": ...}``)."""
        records: list[dict[str, Any]] = []
        for line in self.running.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = {"raw": line}
            records.append(record if isinstance(record, dict) else {"raw": line})
        return records

    def log_text(self) -> str:
        return self.running.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        return self.running.stop()


def serve_as_chart(
    factory: pytest.TempPathFactory,
    name: str,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    keys: Mapping[str, tuple[str, str]] | None = None,
) -> ChartServer:
    """Start a server with the chart's settings and the review's keys (``keys`` replaces them), plus ``args``
    (e.g. ``--catalog``) and ``env`` (overriding the chart's values); it also listens on a TCP port."""
    root = factory.mktemp(name)
    chosen = dict(keys if keys is not None else KEYS)
    key_file = root / "api-keys"
    key_file.write_text("".join(f"{key_name} {scopes} {key}\n" for key_name, (scopes, key) in chosen.items()))
    tcp_port = free_port()
    flags = ["--api-key-file", str(key_file), "--tcp-port", str(tcp_port), *args]
    settings = CHART_ENV | dict(env or {})
    running = start_server(root, flags, settings)
    return ChartServer(running, tcp_port, root, chosen, settings)


class SessionHost(Protocol):
    """Where a session is opened: the /mcp URL, and the headers of a POST by a named key."""

    @property
    def mcp(self) -> str: ...

    def headers(self, name: str, /, **extra: str) -> dict[str, str]: ...


def open_session(
    host: SessionHost, key: str, *, version: str = "2025-11-25", timeout: float = 15.0
) -> tuple[str, dict[str, str]]:
    """A ready session of ``key`` at ``version`` (initialize, then notifications/initialized): its id, and the headers
    its later requests carry (with MCP-Protocol-Version from 2025-06-18 on, as a client of that revision sends)."""
    hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    opened = httpx.post(
        host.mcp,
        json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello},
        headers=host.headers(key),
        timeout=timeout,
    )
    assert opened.status_code == 200, opened.text
    session_id = opened.headers["mcp-session-id"]
    headers = host.headers(key, **{"Mcp-Session-Id": session_id})
    if version != "2025-03-26":
        headers["MCP-Protocol-Version"] = version
    ready = httpx.post(
        host.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers, timeout=timeout
    )
    assert ready.status_code == 202, ready.text
    return session_id, headers
