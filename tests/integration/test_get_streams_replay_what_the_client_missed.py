"""A session's GET stream outlives its connection: what the server sent while the client was away is replayed when
the client resumes (``Last-Event-ID``), and the resumed stream stays open for what comes next.

The stream belongs to the session: a dropped connection detaches it, and it goes on collecting the session's
notifications (the last ``STANDALONE_MAX_EVENTS`` are kept) until the client resumes it or a while passes without
a reader. A resume takes over a connection the server still thinks is reading it (a proxy cut it without a word),
so that a message goes out on one connection only. With Redis the stream is resumed on any replica; when the
replica that ran it is gone, the replica the client resumes on carries it on.

A client that comes back after its stream stopped (nobody read it for the time a stream is kept going) gets what it
kept, then reads on from a new stream of the session: the changes since the stop are lost, the next ones are not.

Real server processes (one with sessions in memory; two replicas sharing a real redis-server), raw HTTP, and the
conformance catalogue, whose ``test_trigger_tool_change`` announces ``notifications/tools/list_changed`` to the GET
streams of the replica that runs it. The server keeps a stream going a minute without a reader, and no setting
changes that: the tests of a stream that stopped run the endpoint as the server builds it, over a session store with
a shorter time, on a real socket in this process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

import redis
from app import __version__
from app.observability.metrics import Metrics
from app.protocol.core import ProtocolCore
from app.protocol.streams import STANDALONE_MAX_EVENTS
from app.sessions import SessionStore
from app.settings import Settings
from app.transports.streamable_http import HttpOptions, McpEndpoint
from app.wiring import create_app
from tests.conftest import RunningServer, free_port, start_server
from tests.integration.sessions import start_replicas

pytestmark = pytest.mark.slow

LIST_CHANGED = "notifications/tools/list_changed"
ENV = {"ERLMCP_SSE_KEEPALIVE_SECONDS": "1"}  # a quiet stream still sends a line every second
TIMEOUT = 10.0  # the longest wait for any one thing: a hang fails the test
QUIET_SECONDS = 1.5  # a GET stream left without events this long (far longer than a reader polls Redis)
IDLE_SECONDS = 2  # the idle time of the sessions (and streams) of the replica that expires them early


@dataclass
class Deployment:
    """The servers of one session store: one process in memory, or two replicas sharing Redis."""

    servers: list[RunningServer]
    redis_url: str | None = None

    @property
    def url(self) -> str:
        return self.servers[0].url


@pytest.fixture(scope="module")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    servers = start_replicas(tmp_path_factory.mktemp("replicas"), redis_url, ENV)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module", params=["memory", "redis"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if request.param == "redis":
        yield Deployment(request.getfixturevalue("replicas"), request.getfixturevalue("redis_url"))
        return
    server = start_server(tmp_path_factory.mktemp("memory"), ["--no-auth", "--catalog", "conformance"], ENV)
    yield Deployment([server])
    server.stop()


def open_session(url: str, version: str = "2025-11-25") -> dict[str, str]:
    """A ready session at ``version``: the headers its requests carry (MCP-Protocol-Version from 2025-06-18 on)."""
    hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    accept = {"Accept": "application/json, text/event-stream"}
    opened = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello},
                        headers=accept, timeout=TIMEOUT)  # fmt: skip
    assert opened.status_code == 200, opened.text
    assert opened.json()["result"]["protocolVersion"] == version
    session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
    if version != "2025-03-26":
        session["MCP-Protocol-Version"] = version
    ready = httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                       headers={**accept, **session}, timeout=TIMEOUT)  # fmt: skip
    assert ready.status_code == 202, ready.text
    return session


@pytest.fixture
def session(deployment: Deployment) -> dict[str, str]:
    """A ready session on the deployment's (first) server."""
    return open_session(deployment.url)


def change(url: str, session: dict[str, str], times: int = 1) -> None:
    """Change the tool list ``times`` (each change is announced to the GET streams of the server at ``url``)."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "test_trigger_tool_change"}}
    headers = {"Accept": "application/json, text/event-stream", **session}
    with httpx.Client(timeout=TIMEOUT) as client:
        for _ in range(times):
            answered = client.post(f"{url}/mcp", json=call, headers=headers)
            assert answered.status_code == 200, answered.text
            assert answered.json()["result"]["content"][0]["text"] == "tool list changed"


Event = tuple[str | None, dict[str, Any] | None]  # its id, and its message (None: a priming event, no data)


class GetStream:
    """``GET /mcp`` on a connection of its own, read one event at a time; ``cut`` drops the connection."""

    def __init__(self, url: str, session: dict[str, str], last_event_id: str | None = None) -> None:
        headers = {"Accept": "text/event-stream", **session}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(timeout=httpx.Timeout(TIMEOUT))
        self._response = self._client.send(self._client.build_request("GET", f"{url}/mcp", headers=headers),
                                           stream=True)  # fmt: skip
        self.status = self._response.status_code
        self._lines = self._response.iter_lines()

    def next(self) -> Event | None:
        """The stream's next event (after keep-alives), or None once the server ended the stream; within TIMEOUT
        (the keep-alives let a quiet stream be given up on)."""
        event_id: str | None = None
        data: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        for line in self._lines:
            assert time.monotonic() < deadline, "no event came, and the stream did not end"
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and (event_id is not None or data):
                text = "".join(data)
                return event_id, orjson.loads(text) if text else None
        return None

    def changes(self, count: int) -> list[Event]:
        """The next ``count`` events, each a list change."""
        got = [self.next() for _ in range(count)]
        assert all(event is not None and event[1] is not None for event in got), got
        assert {event[1]["method"] for event in got if event is not None and event[1] is not None} == {LIST_CHANGED}
        return [event for event in got if event is not None]

    def cut(self) -> None:
        self._response.close()
        self._client.close()


class Streams:
    """Opens GET streams for one test, and cuts every one at its end (whatever it asserted)."""

    def __init__(self) -> None:
        self._opened: list[GetStream] = []

    def get(self, url: str, session: dict[str, str], last_event_id: str | None = None) -> GetStream:
        stream = GetStream(url, session, last_event_id)
        self._opened.append(stream)
        return stream

    def opened(self, url: str, session: dict[str, str], *, priming: bool) -> GetStream:
        """The session's GET stream, past its priming event when it has one."""
        stream = self.get(url, session)
        assert stream.status == 200
        if priming:
            first = stream.next()
            assert first is not None
            assert first[0] is not None  # an id to resume from ...
            assert first[1] is None  # ... and no data
        return stream

    def first_change(self, url: str, session: dict[str, str], *, priming: bool = True) -> tuple[GetStream, Event]:
        """The session's GET stream (:meth:`opened`), and the first change it carried: the event a client resumes
        after."""
        stream = self.opened(url, session, priming=priming)
        change(url, session)
        (seen,) = stream.changes(1)
        return stream, seen

    def resumed(self, url: str, session: dict[str, str], after: Event) -> GetStream:
        """The session's GET stream resumed at ``url`` after the event ``after`` (``Last-Event-ID``)."""
        stream = self.get(url, session, last_event_id=after[0])
        assert stream.status == 200
        return stream

    def cut_all(self) -> None:
        for stream in self._opened:
            stream.cut()


@pytest.fixture
def short_lived(redis_url: str, tmp_path: Path) -> Iterator[list[RunningServer]]:
    """Two replicas whose sessions and streams expire after ``IDLE_SECONDS`` without use."""
    servers = start_replicas(tmp_path, redis_url, {**ENV, "ERLMCP_SESSION_IDLE_SECONDS": str(IDLE_SECONDS)})
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def streams() -> Iterator[Streams]:
    opened = Streams()
    yield opened
    opened.cut_all()


def sequence(event_id: str | None) -> int:
    assert event_id is not None
    return int(event_id.rpartition("-")[2])


def ping(url: str, session: dict[str, str]) -> None:
    """A request on the session (which keeps it from expiring), not on its GET stream."""
    body = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream", **session}
    answered = httpx.post(f"{url}/mcp", json=body, headers=headers, timeout=TIMEOUT)
    assert answered.status_code == 200, answered.text


def next_change(url: str, session: dict[str, str], stream: GetStream) -> int:
    """Change the tool list once at ``url``: the sequence number of the one event that brings it on ``stream``."""
    change(url, session)
    (event,) = stream.changes(1)
    return sequence(event[0])


@pytest.mark.parametrize("version", ["2025-11-25", "2025-03-26"])
def test_a_resumed_get_stream_replays_the_changes_sent_while_the_client_was_away_and_stays_open(
    deployment: Deployment, streams: Streams, version: str
) -> None:
    url = deployment.url
    session = open_session(url, version)
    stream, seen = streams.first_change(url, session, priming=version == "2025-11-25")  # older: no priming event
    stream.cut()

    change(url, session, 2)  # while the client is away
    resumed = streams.resumed(url, session, after=seen)
    missed = resumed.changes(2)
    assert [sequence(event_id) for event_id, _ in missed] == [sequence(seen[0]) + 1, sequence(seen[0]) + 2]

    # The resumed stream is open: the next change comes on it.
    assert next_change(url, session, resumed) == sequence(seen[0]) + 3


def test_a_quiet_get_stream_of_a_session_that_does_not_poll_stays_open_for_a_later_change(
    deployment: Deployment, streams: Streams
) -> None:
    url = deployment.url
    session = open_session(url, "2025-03-26")  # no priming event: the stream has no event until the change
    stream = streams.opened(url, session, priming=False)
    time.sleep(QUIET_SECONDS)  # (keep-alives only)

    change(url, session)
    event = stream.next()
    assert event is not None, "the server ended the quiet GET stream"
    assert event[1] is not None, "an empty event reached a client that does not poll"
    assert event[1]["method"] == LIST_CHANGED
    assert sequence(event[0]) == 1  # the stream's first event


def test_a_get_stream_being_read_outlives_the_idle_time_of_streams(
    short_lived: list[RunningServer], streams: Streams
) -> None:
    writes, reads = (server.url for server in short_lived)
    session = open_session(writes)
    stream, seen = streams.first_change(writes, session)  # the stream's last write, for a while
    stream.cut()
    resumed = streams.resumed(reads, session, after=seen)  # read on the replica that does not write it
    deadline = time.monotonic() + 2 * IDLE_SECONDS
    while time.monotonic() < deadline:  # the session is used (it stays), its stream only read
        ping(writes, session)
        time.sleep(0.5)

    assert next_change(writes, session, resumed) == sequence(seen[0]) + 1  # still there, still read


def test_a_stream_detached_through_more_changes_than_it_keeps_replays_the_latest(
    deployment: Deployment, session: dict[str, str], streams: Streams
) -> None:
    url = deployment.url
    stream, seen = streams.first_change(url, session)
    stream.cut()

    extra = 3
    change(url, session, STANDALONE_MAX_EVENTS + extra)
    latest = sequence(seen[0]) + STANDALONE_MAX_EVENTS + extra
    resumed = streams.resumed(url, session, after=seen)
    replayed = resumed.changes(STANDALONE_MAX_EVENTS)
    expected = list(range(latest - STANDALONE_MAX_EVENTS + 1, latest + 1))
    assert [sequence(event_id) for event_id, _ in replayed] == expected  # the latest, the oldest let go

    # Nothing more was replayed: the next event is the next change.
    assert next_change(url, session, resumed) == latest + 1


def test_a_resume_takes_over_the_connection_the_server_still_thinks_is_reading(
    deployment: Deployment, session: dict[str, str], streams: Streams
) -> None:
    url = deployment.url
    stale, seen = streams.first_change(url, session)

    # The client lost this connection (a proxy cut it) but the server did not see it go: the client resumes.
    resumed = streams.resumed(url, session, after=seen)
    assert stale.next() is None  # the server ended the stale connection ...
    assert next_change(url, session, resumed) == sequence(seen[0]) + 1  # ... and the change goes on the resumed one


def test_a_new_get_stream_replaces_a_detached_one_but_not_one_being_read(
    deployment: Deployment, session: dict[str, str], streams: Streams
) -> None:
    url = deployment.url
    first = streams.opened(url, session, priming=True)
    assert streams.get(url, session).status == 409  # one GET stream per session while it is read
    first.cut()

    deadline = time.monotonic() + TIMEOUT
    while (second := streams.get(url, session)).status == 409:  # until the server sees the cut
        assert time.monotonic() < deadline, "the server never let the cut GET stream go"
        time.sleep(0.05)
    assert second.status == 200
    priming = second.next()
    assert priming is not None
    assert priming[1] is None
    assert next_change(url, session, second) == 2  # a new stream: its priming event, then the change


def test_a_get_stream_cut_on_one_replica_resumes_on_the_other_with_what_it_missed(
    replicas: list[RunningServer], streams: Streams
) -> None:
    first, second = (server.url for server in replicas)
    session = open_session(first)
    stream, seen = streams.first_change(first, session)
    stream.cut()

    change(first, session)  # announced on the replica that runs the stream, while the client is away
    resumed = streams.resumed(second, session, after=seen)
    (missed,) = resumed.changes(1)
    assert sequence(missed[0]) == sequence(seen[0]) + 1
    # Open: what comes next comes too, from the other replica.
    assert next_change(first, session, resumed) == sequence(seen[0]) + 2


def test_a_resume_on_another_replica_takes_over_the_stale_connection(
    replicas: list[RunningServer], streams: Streams
) -> None:
    first, second = (server.url for server in replicas)
    session = open_session(first)
    stale, seen = streams.first_change(first, session)

    resumed = streams.resumed(second, session, after=seen)
    assert stale.next() is None  # the replica running the stream ended its stale connection
    assert next_change(first, session, resumed) == sequence(seen[0]) + 1


def test_a_get_stream_whose_replica_died_is_carried_on_by_the_replica_it_resumes_on(
    redis_url: str, tmp_path: Path, streams: Streams
) -> None:
    servers = start_replicas(tmp_path, redis_url, ENV)
    try:
        doomed, survivor = servers
        session = open_session(doomed.url)
        stream, seen = streams.first_change(doomed.url, session)
        doomed.process.kill()  # kill -9: the stream's writer is gone
        doomed.process.wait(TIMEOUT)
        stream.cut()

        stream_id = str(seen[0]).rpartition("-")[0]
        store = redis.Redis.from_url(redis_url)
        try:
            entries: Any = store.xrevrange(f"erlmcp:events:{stream_id}", count=1)
            writer = entries[0][1][b"w"].decode()
            deadline = time.monotonic() + TIMEOUT  # until the dead replica's liveness key has expired
            while store.exists(f"erlmcp:replica:{writer}"):
                assert time.monotonic() < deadline, "the killed replica still looks alive"
                time.sleep(0.1)
        finally:
            store.close()

        resumed = streams.resumed(survivor.url, session, after=seen)
        change(survivor.url, session)  # the survivor now runs the stream: its changes come on it
        (carried,) = resumed.changes(1)
        assert str(carried[0]).rpartition("-")[0] == stream_id
        assert sequence(carried[0]) == sequence(seen[0]) + 1  # the same stream, numbered on
    finally:
        streams.cut_all()
        for server in servers:
            server.stop()


STOP_SECONDS = 0.5  # how long the in-process server keeps a GET stream going without a reader


@dataclass
class InProcess:
    """The MCP endpoint served on a real socket in this process, and its session store."""

    url: str
    sessions: SessionStore

    def stopped(self, session: dict[str, str]) -> None:
        """Wait until the session's GET stream stopped (nobody read it for ``STOP_SECONDS``)."""
        (held,) = [held for held in self.sessions.all() if held.id == session["Mcp-Session-Id"]]
        deadline = time.monotonic() + TIMEOUT
        while held.standalone is not None:
            assert time.monotonic() < deadline, "the GET stream nobody read never stopped"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def quickly_stopping() -> Iterator[InProcess]:
    """The MCP endpoint as the server builds it (``create_app``: the conformance catalogue, no authentication), over
    a session store in memory whose GET streams stop after ``STOP_SECONDS`` without a reader."""
    built = create_app(Settings(no_auth=True, catalog="conformance"), metrics=Metrics(__version__))
    base: ProtocolCore = built.state.protocol_core
    sessions = SessionStore(max_sessions=100, idle_seconds=60, keep_finished_seconds=STOP_SECONDS)
    core = ProtocolCore(dispatcher=base.dispatcher, sessions=sessions, gate=base.gate, metrics=base.metrics)
    endpoint = McpEndpoint(core, HttpOptions(keepalive_seconds=1))
    app = Starlette(routes=[Route("/mcp", endpoint.handle, methods=["GET", "POST", "DELETE"])])
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive(), "the in-process server stopped at start"
        assert time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.05)
    try:
        yield InProcess(f"http://127.0.0.1:{port}", sessions)
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the in-process server did not stop"


@pytest.mark.parametrize("version", ["2025-11-25", "2025-03-26"])
def test_a_client_that_resumes_after_its_get_stream_stopped_reads_on_from_a_new_stream(
    quickly_stopping: InProcess, streams: Streams, version: str
) -> None:
    url = quickly_stopping.url
    session = open_session(url, version)
    polling = version == "2025-11-25"
    stream, seen = streams.first_change(url, session, priming=polling)
    stream.cut()
    quickly_stopping.stopped(session)  # the client stayed away past the time the stream is kept going

    resumed = streams.resumed(url, session, after=seen)
    if polling:  # a new stream's priming event: an id on it to resume from
        priming = resumed.next()
        assert priming is not None, "the resumed connection ended: the client would hear of no change again"
        assert priming[1] is None
    change(url, session)  # the next change comes on the resumed connection, from the new stream
    (carried,) = resumed.changes(1)
    assert str(carried[0]).rpartition("-")[0] != str(seen[0]).rpartition("-")[0]

    # The new stream is the session's GET stream: cut, it resumes as any does.
    resumed.cut()
    again = streams.resumed(url, session, after=carried)
    assert next_change(url, session, again) == sequence(carried[0]) + 1


@pytest.mark.parametrize("last_event_id", [b"ab-\xb2", b"ab-" + b"1" * 5000], ids=["superscript-two", "5000-digits"])
def test_resuming_from_an_event_id_that_is_not_one_of_ours_is_404(
    deployment: Deployment, session: dict[str, str], last_event_id: bytes
) -> None:
    headers = {b"Accept": b"text/event-stream", b"Last-Event-ID": last_event_id}
    headers |= {name.encode(): value.encode() for name, value in session.items()}
    answered = httpx.get(f"{deployment.url}/mcp", headers=headers, timeout=TIMEOUT)
    assert answered.status_code == 404, answered.text
