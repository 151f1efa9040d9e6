"""SIGTERM to a real server under load, with event streams open: every request completes or gets an error a client
may retry, no request hangs, every stream ends with a ``retry`` hint (so its client reconnects, to another replica
when sessions are shared), and the process exits inside its budget."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, start_server
from tests.sse import response_message
from tests.stateless import post

pytestmark = pytest.mark.slow

DRAIN_SECONDS = 1.0
SHUTDOWN_SECONDS = 6.0
BUDGET = DRAIN_SECONDS + SHUTDOWN_SECONDS + 3.0  # what the chart's grace period must cover, with room to spare
CLIENT_TIMEOUT = 15.0  # far past the budget: a request still open then has hung
CATALOG = """
tools:
  - {name: stamp, description: Sleeps on a thread then says when., kind: python,
     function: "tests.app.runtime.functions:stamp"}
  - {name: echo, description: Echoes., builtin: echo}
"""
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@dataclass
class Outcomes:
    """What each request of the load ended with: ``ok``, ``retryable:<why>`` or ``failed:<why>``."""

    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.seen[outcome] += 1

    def failed(self) -> dict[str, int]:
        return {k: v for k, v in self.seen.items() if not (k == "ok" or k.startswith("retryable:"))}


def stateless_call(client: httpx.Client, url: str, name: str, arguments: dict[str, Any]) -> httpx.Response:
    return post(url, "tools/call", {"name": name, "arguments": arguments}, timeout=CLIENT_TIMEOUT, client=client)


def classify(call: Any) -> str:
    """Run one request: ok, or an error a client can retry safely (refused, or closed with no answer, or 503 with
    Retry-After), or a failure (a timeout is a hang; anything else is wrong)."""
    try:
        response: httpx.Response = call()
    except httpx.ConnectError:
        return "retryable:refused"
    except httpx.RemoteProtocolError:
        return "retryable:closed-unanswered"
    except httpx.ReadError:
        # Reset with no answer: a connection still in the listener's backlog when the listener closed (the kernel
        # resets those). The server never read the request; one it did read is answered (the slow call shows it).
        return "retryable:reset-unanswered"
    except httpx.TimeoutException:
        return "failed:hung"
    if response.status_code == 503 and "retry-after" in response.headers:
        return "retryable:503"
    if response.status_code != 200:
        return f"failed:{response.status_code}"
    message = response_message(response.headers.get("content-type", ""), response.text)
    return "ok" if "result" in message and not message["result"].get("isError") else f"failed:{message}"


def load(server: RunningServer, outcomes: Outcomes, stop: threading.Event) -> None:
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        while not stop.is_set():
            outcome = classify(lambda: stateless_call(client, f"{server.url}/mcp", "echo", {"text": "load"}))
            outcomes.add(outcome)
            if outcome == "retryable:refused":
                return  # the listener is gone: a client would now go to another replica


def open_stream(server: RunningServer) -> tuple[httpx.Client, httpx.Response]:
    """A 2025-11-25 session with its GET stream open (the response's body not yet read)."""
    client = httpx.Client(timeout=CLIENT_TIMEOUT)
    opened = client.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                                    "params": INIT}, headers=HEADERS)  # fmt: skip
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    client.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers={**HEADERS, **session})  # fmt: skip
    listen = client.build_request("GET", f"{server.url}/mcp", headers={"Accept": "text/event-stream", **session})
    stream = client.send(listen, stream=True)
    assert stream.status_code == 200
    return client, stream


def read_to_end(stream: httpx.Response, into: list[str]) -> None:
    try:
        for text in stream.iter_text():
            into.append(text)
        into.append("<end>")
    except httpx.TimeoutException:
        into.append("<hung>")
    except httpx.HTTPError as exc:
        into.append(f"<broken {type(exc).__name__}>")


@pytest.fixture
def server(tmp_path: Path) -> RunningServer:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    return start_server(tmp_path, ["--no-auth", "--catalog", str(catalog), "--drain-seconds", str(DRAIN_SECONDS)],
                        {"ERLMCP_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_SECONDS)})  # fmt: skip


def test_an_open_event_stream_ends_with_a_retry_hint_when_the_server_stops(server: RunningServer) -> None:
    client, stream = open_stream(server)
    received: list[str] = []
    reader = threading.Thread(target=read_to_end, args=(stream, received))
    reader.start()
    try:
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        reader.join(BUDGET)
        assert not reader.is_alive(), "the stream was still open after the shutdown budget"
        assert received[-1] == "<end>"
        body = "".join(received[:-1])
        last_event = body.rstrip("\n").split("\n\n")[-1]
        assert last_event.startswith("retry: "), body
        assert int(last_event.removeprefix("retry: ")) > 0
        assert server.process.wait(timeout=BUDGET) == 0
    finally:
        stream.close()
        client.close()
        server.stop()


def test_while_draining_answers_close_their_connection_so_that_keep_alive_clients_move_on_cleanly(
    server: RunningServer,
) -> None:
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        before = stateless_call(client, f"{server.url}/mcp", "echo", {"text": "before"})
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # inside the drain: still served, /readyz already 503
        during = stateless_call(client, f"{server.url}/mcp", "echo", {"text": "during"})
        health = client.get(f"{server.url}/readyz")
    try:
        assert before.headers.get("connection") != "close"
        assert during.status_code == 200
        assert during.headers["connection"] == "close"
        assert health.status_code == 503
        assert health.headers["connection"] == "close"
        assert server.process.wait(timeout=BUDGET) == 0
    finally:
        server.stop()


def test_sigterm_under_load_loses_no_request_hangs_none_and_exits_within_its_budget(server: RunningServer) -> None:
    outcomes, stop = Outcomes(), threading.Event()
    workers = [threading.Thread(target=load, args=(server, outcomes, stop)) for _ in range(6)]
    streams = [open_stream(server) for _ in range(3)]
    received: list[list[str]] = [[] for _ in streams]
    readers = [threading.Thread(target=read_to_end, args=(s, r)) for (_, s), r in zip(streams, received, strict=True)]
    slow: list[str] = []
    in_flight = threading.Thread(target=lambda: slow.append(classify(lambda: stateless_call(
        httpx.Client(timeout=CLIENT_TIMEOUT), f"{server.url}/mcp", "stamp", {"seconds": 3.0}))))  # fmt: skip
    for thread in (*workers, *readers):
        thread.start()
    try:
        time.sleep(1.0)  # load runs
        in_flight.start()
        time.sleep(0.3)  # the slow call is in flight when the signal comes
        assert outcomes.seen["ok"] > 0, outcomes.seen
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=BUDGET + 5)
        exited = time.monotonic() - signalled
        stop.set()
        for thread in (*workers, *readers, in_flight):
            thread.join(CLIENT_TIMEOUT + 5)
            assert not thread.is_alive(), "a client is still waiting: a request hung"
    finally:
        stop.set()
        for client, stream in streams:
            stream.close()
            client.close()
        server.stop()
    print(f"exit after {exited:.2f} s; outcomes {dict(outcomes.seen)}")  # shown with -s
    assert code == 0
    assert exited < BUDGET, f"the server took {exited:.1f} s to exit; the budget is {BUDGET} s"
    assert slow == ["ok"], "the tool call in flight at SIGTERM did not finish with its result"
    assert outcomes.failed() == {}, outcomes.seen
    assert outcomes.seen["ok"] > 10, outcomes.seen
    for body in received:
        assert body[-1] == "<end>", body
        assert "".join(body[:-1]).rstrip("\n").split("\n\n")[-1].startswith("retry: ")
