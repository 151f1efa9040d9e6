"""The tester's WebSocket check against a real server."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.conftest import RunningServer
from verify.checks.transports import check_websocket
from verify.client import Target, WireClient

pytestmark = pytest.mark.slow


def test_the_websocket_check_speaks_over_its_connection_from_one_thread(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OpenSSL connection may not be read and written from two threads at once. websockets' sync client reads in
    a thread of its own while the opening handshake writes; over TLS on a loaded machine its upgrade request now and
    then never reached the server (about 1 in 300 wss:// handshakes under load: the server cut the connection at
    its header deadline, the client timed out; a plain ssl socket sending the same request, and websockets' asyncio
    client, 0 in 3,000), and the chart's test Pod failed `transport.websocket` against a server that was fine."""
    started: list[str] = []
    start = threading.Thread.start

    def recorded(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", recorded)
    target = Target(url=server.url, metrics_url=server.metrics_url, api_key="test-key-0123456789abcdef")
    with httpx.Client(timeout=target.timeout) as http:
        said = check_websocket(WireClient(target, http))
    assert said.startswith("initialize over /ws -> ")
    assert started == []
