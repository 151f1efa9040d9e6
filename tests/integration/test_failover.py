"""kill -9 of one replica under load: two real replicas sharing one real Redis behind the round-robin proxy (which,
like a Kubernetes Service, stops sending new connections to a dead Pod).

Each client holds a session, calls tools in a loop (some calls announce tools/list_changed to the GET streams of
the replica that runs them) and keeps a GET stream open. When one replica is killed, the clients go on with the
same sessions on the other one: a request that was in flight fails with a connection error and succeeds when sent
again; every response received is right; a GET stream cut with the replica resumes from ``Last-Event-ID`` on the
survivor, and every event its stream holds in Redis reaches the client exactly once. The survivor ends a resumed
stream once the replica that wrote it is known to be gone, and the client's new stream carries notifications
again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import redis
from app.protocol.streams import STANDALONE_MAX_EVENTS
from deployer.marketplace.proxy import RoundRobinProxy
from tests.conftest import RunningServer
from tests.integration.sessions import open_session, post, start_replicas
from tests.sse import events

pytestmark = pytest.mark.slow

CLIENTS = 4
EXPECTED = {"test_simple_text": "This is a simple text response for testing.",
            "test_trigger_tool_change": "tool list changed"}  # fmt: skip
RETRYABLE = {502, 503}


@pytest.fixture
def replicas(redis_url: str, tmp_path: Path) -> Iterator[list[RunningServer]]:
    servers = start_replicas(tmp_path, redis_url, {"ERLMCP_SSE_KEEPALIVE_SECONDS": "0.5"})
    yield servers
    for server in servers:
        server.stop()


class GetStream(threading.Thread):
    """A client's GET stream: resumed from the last event id when the connection is cut, opened anew when the
    server ends it."""

    def __init__(self, url: str, session: dict[str, str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.session, self.stop = url, session, stop
        self.received: list[tuple[str, dict[str, Any] | None]] = []
        self.resumed: list[int] = []  # the status of each resumption
        self.opened = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def _run(self) -> None:
        last: str | None = None
        while not self.stop.is_set():
            headers = {**self.session, "Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            try:
                with httpx.Client(timeout=5) as client, client.stream("GET", f"{self.url}/mcp", headers=headers) as r:
                    if last:
                        self.resumed.append(r.status_code)
                    if r.status_code != 200:
                        last = None  # nothing to resume: a new stream
                        continue
                    self.opened.set()
                    buffer = ""
                    for chunk in r.iter_text():
                        buffer += chunk
                        complete, _, buffer = buffer.rpartition("\n\n")
                        for event_id, message in events(complete):
                            if event_id is not None:
                                self.received.append((event_id, message))
                                last = event_id
                        if self.stop.is_set():
                            return
                last = None  # the server ended the stream: its writer is gone; open a new one
            except httpx.TransportError:
                time.sleep(0.05)  # cut (the replica died): resume from `last`

    def stream_ids(self) -> list[str]:
        return list(dict.fromkeys(event_id.rpartition("-")[0] for event_id, _ in self.received))


class Load(threading.Thread):
    """A client calling tools in a loop on its session; a request that fails retryably is sent again."""

    def __init__(self, url: str, session: dict[str, str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.session, self.stop = url, session, stop
        self.answers: list[tuple[int, str, float, int, dict[str, Any]]] = []  # id, tool, sent, status, body
        self.failures: list[tuple[int, float, str]] = []  # id, sent, what went wrong
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _run(self) -> None:
        request_id = 0
        while not self.stop.is_set():
            request_id += 1
            tool = "test_trigger_tool_change" if request_id % 3 == 0 else "test_simple_text"
            body = {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": tool, "arguments": {}},
            }
            for _ in range(20):
                sent = time.monotonic()
                try:
                    response = post(self.url, body, self.session)
                except httpx.TransportError as exc:
                    self.failures.append((request_id, sent, repr(exc)))
                    time.sleep(0.05)
                    continue
                if response.status_code in RETRYABLE:
                    self.failures.append((request_id, sent, f"HTTP {response.status_code}"))
                    time.sleep(0.05)
                    continue
                self.answers.append((request_id, tool, sent, response.status_code, orjson.loads(response.content)))
                break
            else:
                raise AssertionError(f"request {request_id} failed 20 times: {self.failures[-3:]}")


def written(store: redis.Redis, stream_id: str) -> list[str]:
    """The event ids a stream holds in Redis (without its end marker)."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = store.xrange(f"erlmcp:events:{stream_id}")  # type: ignore[assignment]
    return [
        f"{stream_id}-{int(fields[b'seq'])}"
        for _, fields in entries
        if fields[b"seq"] != b"-1" and fields.get(b"k") != b"a"  # (the entry naming an adopter is no event)
    ]


def test_clients_keep_their_sessions_and_streams_when_a_replica_is_killed(
    replicas: list[RunningServer], redis_url: str
) -> None:
    store = redis.Redis.from_url(redis_url)
    stop_calls, stop_streams = threading.Event(), threading.Event()
    with RoundRobinProxy([server.port for server in replicas]) as proxy:
        url = f"http://127.0.0.1:{proxy.port}"
        sessions = [open_session(url) for _ in range(CLIENTS)]
        streams, hosts = [], []
        for session in sessions:  # one at a time, to see from the proxy's counts which replica holds each
            counts = dict(proxy.served)
            stream = GetStream(url, session, stop_streams)
            stream.start()
            assert stream.opened.wait(10)
            streams.append(stream)
            hosts.append(next(port for port, served in proxy.served.items() if served > counts[port]))
        victim = max(replicas, key=lambda server: hosts.count(server.port))  # holds at least one GET stream
        survivor = next(server for server in replicas if server is not victim)
        loads = [Load(url, session, stop_calls) for session in sessions]
        for load in loads:
            load.start()
        time.sleep(1.5)
        victim.process.kill()  # kill -9, mid-load
        victim.process.wait(10)
        killed = time.monotonic()
        cut = [stream for stream, host in zip(streams, hosts, strict=True) if host == victim.port]

        def caught_up() -> bool:
            """Every load went on after the kill, and every cut stream resumed, ended and was opened anew, with
            notifications (from calls the survivor ran) on its new stream."""
            progressed = all(len([a for a in load.answers if a[2] > killed]) >= 5 for load in loads)
            renewed = all(len(stream.stream_ids()) >= 2 and stream.received[-1][1] is not None for stream in cut)
            return progressed and renewed

        deadline = time.monotonic() + 15
        while not caught_up() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_calls.set()  # first the calls, then (once they delivered what the last calls wrote) the streams
        for load in loads:
            load.join(15)
        time.sleep(1)
        stop_streams.set()
        for stream in streams:
            stream.join(10)

    assert survivor.process.poll() is None
    for worker in (*loads, *streams):
        assert not worker.is_alive()
    assert [load.error for load in loads] == [None] * CLIENTS
    assert [stream.error for stream in streams] == [None] * CLIENTS

    # The calls: every response received is right; only requests sent to the dying replica failed (in flight, or
    # connected while it was dying), and each succeeded when sent again.
    for load in loads:
        assert [a[0] for a in load.answers] == list(range(1, len(load.answers) + 1))  # each request answered once
        for request_id, tool, _, status, body in load.answers:
            assert status == 200, body
            assert body["id"] == request_id
            assert body["result"]["content"][0]["text"] == EXPECTED[tool]
        late = [(failed, round(sent - killed, 3), error) for failed, sent, error in load.failures if sent >= killed]
        assert late == []  # once the replica was gone, nothing failed
        assert len([a for a in load.answers if a[2] > killed]) >= 5  # went on, on the survivor, same session

    # The GET streams: every event each stream holds in Redis (its latest STANDALONE_MAX_EVENTS, older ones let go)
    # reached its client exactly once, across the cut.
    assert cut
    for stream in streams:
        ids = [event_id for event_id, _ in stream.received]
        assert len(ids) == len(set(ids)), "an event came twice"
        for stream_id in stream.stream_ids():
            got, kept = [i for i in ids if i.startswith(f"{stream_id}-")], written(store, stream_id)
            assert len(kept) == min(len(got), STANDALONE_MAX_EVENTS)
            assert got[len(got) - len(kept) :] == kept
    for stream in cut:
        assert stream.resumed
        assert stream.resumed[0] == 200  # resumed on the survivor
        first, *later = stream.stream_ids()
        assert later  # the survivor ended the dead replica's stream; the client opened a new one there
        notified = [m for i, m in stream.received if i.startswith(later[-1]) and m is not None]
        assert notified
        assert {m["method"] for m in notified} == {"notifications/tools/list_changed"}
    store.close()
