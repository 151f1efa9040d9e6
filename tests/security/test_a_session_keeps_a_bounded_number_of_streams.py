"""A session keeps only a bounded number of event streams, however often it opens them (red-team finding 10a).

Each ``GET /mcp`` opens the session's standalone stream; each call answered as an event stream has a stream of its
own. Both are kept for resumption (``Last-Event-ID``), so they cost memory (or Redis) until they are let go. The
review opened and closed the GET stream 200 times in one session, and each time about 1 KB stayed in the session
(about 5 KB, for 30 minutes, in Redis). Now a session holds at most its latest GET stream, and the streams of
finished calls are bounded too (and expire soon after they finish, in Redis as in memory).

What the session store holds is measured where it lives: in Redis with a real client (the keys holding event
streams and their ``MEMORY USAGE``), against a real server process; in memory on a server built by ``create_app``
exactly as the listener serves it, on a real socket in this process (the store is visible only from inside).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

import redis
from app.observability.metrics import Metrics
from app.protocol.core import ProtocolCore
from app.settings import Settings
from app.wiring import create_app
from tests.conftest import free_port, wait_ready
from tests.redis_server import RedisServer
from tests.security.conftest import ACCEPT, CHART_ENV, KEYS, open_session, serve_as_chart

pytestmark = pytest.mark.slow

TIMEOUT = 15.0  # liveness bound of each request
CYCLES = 200  # GET streams opened and closed in one session, as in the review
CALLS = 50  # streamed calls in one session, then as many again: more than a session keeps finished streams of
FINISHED_TTL_SECONDS = 60  # how long a finished stream stays resumable
# The chart's settings without its request rate: the tests open a few hundred streams in seconds, which the rate
# (20 a second, a burst of 100) would refuse on a fast machine; rates are policy, tested in test_limits_*.
UNLIMITED = {"ERLMCP_RATE_LIMIT_PER_SECOND": "0"}


@dataclass(frozen=True)
class Held:
    """What the session store holds in event streams: how many, and their size in bytes."""

    streams: int
    bytes: int


@dataclass
class Target:
    """A server with the chart's settings, and a look at what its session store holds in event streams."""

    mcp: str
    held: Callable[[str], Held]  # by session id
    ttls: Callable[[], list[int]]  # seconds each stream has left to live (none in memory: kept by the process)

    def headers(self, key: str, /, **extra: str) -> dict[str, str]:
        return {
            "Accept": ACCEPT,
            "Content-Type": "application/json",
            "Authorization": f"Bearer {KEYS[key][1]}",
            **extra,
        }


def _redis_target(factory: pytest.TempPathFactory) -> Iterator[Target]:
    store = RedisServer(factory.mktemp("redis")).start()
    env = {"ERLMCP_REDIS_URL": store.url} | UNLIMITED
    server = serve_as_chart(factory, "bounded-streams-redis", env=env)
    client = redis.Redis.from_url(store.url)

    def stream_keys() -> list[Any]:
        return [key for key in client.scan_iter(count=1000) if client.type(key) == b"stream"]

    def held(_: str) -> Held:
        keys = stream_keys()
        return Held(len(keys), sum(int(client.memory_usage(key) or 0) for key in keys))

    def ttls() -> list[int]:
        return [int(client.ttl(key)) for key in stream_keys()]

    try:
        yield Target(server.mcp, held, ttls)
    finally:
        client.close()
        server.stop()
        store.stop()


def _memory_target(factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = factory.mktemp("bounded-streams-memory")
    key_file = root / "api-keys"
    key_file.write_text("".join(f"{name} {scopes} {key}\n" for name, (scopes, key) in KEYS.items()))
    settings = Settings(
        api_key_file=key_file,
        rate_limit_per_second=float(UNLIMITED["ERLMCP_RATE_LIMIT_PER_SECOND"]),
        rate_limit_burst=int(CHART_ENV["ERLMCP_RATE_LIMIT_BURST"]),
    )
    app = create_app(settings, metrics=Metrics("test"))
    core: ProtocolCore = app.state.protocol_core
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/readyz")

    def held(session_id: str) -> Held:
        session = next(session for session in core.sessions.all() if session.id == session_id)
        streams = list(session.streams.values())
        size = sum(len(event.id) + len(event.data) for stream in streams for event in list(stream.events))
        return Held(len(streams), size)

    try:
        yield Target(f"{url}/mcp", held, list)
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the in-process server did not stop"


@pytest.fixture(scope="module", params=["memory", "redis"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from (_memory_target if request.param == "memory" else _redis_target)(tmp_path_factory)


def open_and_close_the_get_stream(target: Target, session: dict[str, str]) -> None:
    """Open the session's GET stream, read its priming event, and hang up (as soon as the server has let the previous
    one go: until then a second GET stream is refused with 409)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with (
            httpx.Client(timeout=TIMEOUT) as client,
            client.stream("GET", target.mcp, headers={**session, "Accept": "text/event-stream"}) as stream,
        ):
            if stream.status_code == 200:
                buffer = ""
                for chunk in stream.iter_text():
                    buffer += chunk
                    if "\n\n" in buffer:  # the priming event
                        return
                raise AssertionError("the GET stream ended before its priming event")
            assert stream.status_code == 409, stream.read()
        assert time.monotonic() < deadline, "the server never let the previous GET stream go"
        time.sleep(0.01)


def streamed_echo(target: Target, session: dict[str, str], request_id: int) -> None:
    """A call answered as an event stream (the client accepts nothing else), read to its end."""
    call = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": f"call {request_id}"}}}  # fmt: skip
    answered = httpx.post(target.mcp, json=call, headers={**session, "Accept": "text/event-stream"}, timeout=TIMEOUT)
    assert answered.status_code == 200, answered.text
    assert answered.headers["content-type"].startswith("text/event-stream")
    assert f"call {request_id}" in answered.text


def test_opening_and_closing_the_get_stream_again_and_again_does_not_grow_the_session(target: Target) -> None:
    session_id, session = open_session(target, "limited", timeout=TIMEOUT)
    open_and_close_the_get_stream(target, session)
    once = target.held(session_id)
    assert once.streams >= 1  # the measure sees the GET stream (it is kept for resumption while it may be resumed)

    for _ in range(CYCLES - 1):
        open_and_close_the_get_stream(target, session)

    after = target.held(session_id)
    assert after.streams <= once.streams, f"{CYCLES} GET streams left {after} in the store (one left {once})"
    assert after.bytes <= once.bytes + 256, f"{CYCLES} GET streams left {after} in the store (one left {once})"

    # The last GET stream waits a while for its client to come back (a GET stream outlives its connection); the
    # client ends its session instead, which stops it: it is finished, and goes soon (in Redis too).
    assert httpx.delete(target.mcp, headers=session, timeout=TIMEOUT).status_code == 200


def test_a_session_keeps_a_bounded_number_of_finished_call_streams_and_not_for_long(target: Target) -> None:
    session_id, session = open_session(target, "other", timeout=TIMEOUT)
    before = target.held(session_id).streams
    for request_id in range(1, CALLS + 1):
        streamed_echo(target, session, request_id)
    first = target.held(session_id).streams - before
    assert first >= 1  # the measure sees the finished streams (they stay resumable a while)

    for request_id in range(CALLS + 1, 2 * CALLS + 1):
        streamed_echo(target, session, request_id)
    second = target.held(session_id).streams - before
    assert second <= first < CALLS, f"{CALLS} calls left {first} streams, {2 * CALLS} calls {second}"

    # In Redis, a finished stream expires soon after its end, not with the session (30 minutes).
    assert [ttl for ttl in target.ttls() if ttl > FINISHED_TTL_SECONDS or ttl == -1] == []
