"""Redis goes away under steady traffic, and comes back: two real replicas sharing one real Redis.

Two kinds of outage, both on the same port and with the data kept:

- ``paused``: SIGSTOP, then SIGCONT. Redis is there but answers nothing, as a hung server or a network
  partition: connections are accepted by the kernel and never answered, so only the client's timeouts stop a
  request from hanging (without them, redis-py waits 5 s per attempt and retries 10 times).
- ``killed``: SIGKILL, then a new redis-server on the same port. Connections are refused, the pooled ones and
  the bus subscription die, and the server must reconnect and subscribe again. An append-only file synced on
  every write keeps the data, as a Redis with persistence (or a replica promoted by Sentinel) would, so that a
  session opened before the outage can be used after it.

During the outage every request is answered at once (503, ``Retry-After``, a JSON-RPC error saying the session
store is unavailable), /readyz answers 503 and /livez 200; afterwards readiness, the old session, a new one and
the session bus (a server request answered through the other replica) work again, with one warning and one info
in each replica's log and no traceback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from tests.conftest import RunningServer
from tests.integration.sessions import open_session, post, sample_across, start_replicas
from tests.redis_server import RedisServer
from tests.stateless import post as stateless_post

pytestmark = pytest.mark.slow

TIMEOUT_SECONDS = 1.0  # ERLMCP_REDIS_TIMEOUT_SECONDS
ANSWER_WITHIN = TIMEOUT_SECONDS + 1.5  # a bound, not a measure: no request may wait on Redis longer than this
SIMPLE = "This is a simple text response for testing."


@pytest.fixture
def replicas(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[RunningServer]]:
    servers = start_replicas(tmp_path, redis_server.url, {"ERLMCP_REDIS_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)})
    yield servers
    for server in servers:
        server.stop()


@dataclass
class Answer:
    started: float
    seconds: float
    status: int | None  # None: no HTTP answer at all
    body: dict[str, object] | None
    retry_after: str | None


def call(url: str, session: dict[str, str], request_id: int) -> Answer:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "test_simple_text", "arguments": {}}}  # fmt: skip
    started = time.monotonic()
    try:
        response = post(url, body, session, timeout=10)
    except httpx.HTTPError:
        return Answer(started, time.monotonic() - started, None, None, None)
    return Answer(started, time.monotonic() - started, response.status_code, orjson.loads(response.content),
                  response.headers.get("retry-after"))  # fmt: skip


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def wait_for(condition: object, timeout: float, interval: float = 0.1) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


@pytest.mark.parametrize("outage", ["paused", "killed"])
def test_a_redis_outage_is_answered_fast_seen_by_readiness_and_recovered_from(
    redis_server: RedisServer, replicas: list[RunningServer], outage: str
) -> None:
    urls = [server.url for server in replicas]
    before = open_session(urls[0])
    assert call(urls[1], before, 1).status == 200

    answers: list[Answer] = []
    live: list[int] = []
    stop = threading.Event()

    def traffic() -> None:  # steady: one request after another, alternating replicas, on the session from before
        request_id = 100
        while not stop.is_set():
            request_id += 1
            answers.append(call(urls[request_id % 2], before, request_id))
            live.extend(status(f"{url}/livez") for url in urls)
            time.sleep(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    time.sleep(0.5)
    went = time.monotonic()
    redis_server.pause() if outage == "paused" else redis_server.kill()
    try:
        assert wait_for(lambda: all(status(f"{url}/readyz") == 503 for url in urls), timeout=5), "/readyz stayed 200"
        readiness_down = time.monotonic() - went
        assert all(status(f"{url}/healthz") == 503 for url in urls)  # the readiness aliases agree
        time.sleep(2)  # traffic meets the outage known, not only its first seconds
    finally:
        redis_server.resume() if outage == "paused" else redis_server.start()
    back = time.monotonic()
    assert wait_for(lambda: all(status(f"{url}/readyz") == 200 for url in urls), timeout=10), "/readyz stayed 503"
    ready = time.monotonic()
    readiness_up = ready - back
    assert wait_for(lambda: len([a for a in answers if a.started > ready]) >= 4, timeout=10)
    stop.set()
    worker.join(15)
    assert not worker.is_alive()

    # Every request got its answer, none waited on Redis beyond the bound: 200 as usual, or a clear 503.
    assert all(a.status is not None for a in answers), "a request got no HTTP answer"
    assert max(a.seconds for a in answers) < ANSWER_WITHIN, [round(a.seconds, 2) for a in answers]
    refused = [a for a in answers if a.status == 503]
    assert refused, "no request met the outage"
    for answer in refused:
        assert answer.retry_after == "1"
        assert answer.body is not None
        error = answer.body["error"]
        assert isinstance(error, dict)
        assert "session store is unavailable" in error["message"]
    for answer in answers:
        if answer.status != 503:
            assert answer.status == 200
            assert answer.body is not None
            assert answer.body["result"]["content"][0]["text"] == SIMPLE  # type: ignore[index]
    assert {a.status for a in answers if a.started > ready} == {200}  # once ready again, served again
    assert live
    assert set(live) == {200}  # liveness never depends on Redis
    assert readiness_down < 5
    assert readiness_up < 10

    # The session from before the outage, a new one, and the session bus, on both replicas.
    assert [call(url, before, 2 + i).status for i, url in enumerate(urls)] == [200, 200]
    after = open_session(urls[1])
    assert [call(url, after, 5 + i).status for i, url in enumerate(urls)] == [200, 200]
    for asking, answering in ((urls[0], urls[1]), (urls[1], urls[0])):
        asked, result = sample_across(asking, answering, after, text="after the outage")
        assert asked is not None
        assert result is not None
        assert result["result"]["content"][0]["text"] == "LLM response: after the outage"

    for server in replicas:
        assert server.process.poll() is None
        lines = [orjson.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        about_redis = [
            (line["severity"], line["message"]) for line in lines if line.get("logger") == "app.sessions.redis"
        ]
        assert about_redis == [
            ("WARNING", "Redis does not answer: requests that need the session store get 503 until it does"),
            ("INFO", "Redis answers again"),
        ]
        assert "Traceback" not in server.log.read_text()
        assert not [line for line in lines if line["severity"] in {"ERROR", "CRITICAL"}]


def test_a_websocket_client_gets_a_clear_error_while_redis_is_away_and_a_session_after(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    [server] = start_replicas(tmp_path, redis_server.url, {"ERLMCP_REDIS_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)},
                              count=1)  # fmt: skip
    params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    try:
        with connect(f"ws://127.0.0.1:{server.port}/ws", subprotocols=["mcp"], open_timeout=5) as socket:  # type: ignore[list-item]
            redis_server.pause()
            started = time.monotonic()
            socket.send(orjson.dumps(init).decode())
            refused = orjson.loads(socket.recv(timeout=ANSWER_WITHIN + 1))
            seconds = time.monotonic() - started
            redis_server.resume()
            assert wait_for(lambda: status(f"{server.url}/readyz") == 200, 10)
            socket.send(orjson.dumps({**init, "id": 2}).decode())  # the same connection, once Redis is back
            accepted = orjson.loads(socket.recv(timeout=5))
        log = server.log.read_text()
    finally:
        redis_server.resume()
        server.stop()
    assert seconds < ANSWER_WITHIN
    assert refused["id"] == 1
    assert refused["error"]["message"].startswith("Service Unavailable: the session store is unavailable")
    assert refused["error"]["data"] == {"retryAfter": 1}
    assert accepted["id"] == 2
    assert accepted["result"]["protocolVersion"] == "2025-11-25"
    assert "Traceback" not in log


def test_stateless_requests_go_on_unlimited_while_the_shared_rate_budget_is_away_and_the_log_says_so_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"ERLMCP_REDIS_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS), "ERLMCP_RATE_LIMIT_PER_SECOND": "1000"}
    [server] = start_replicas(tmp_path, redis_server.url, env, count=1)
    try:
        assert stateless_echo(server).status_code == 200
        redis_server.pause()
        timings = []
        for _ in range(20):
            started = time.monotonic()
            answer = stateless_echo(server)
            timings.append(time.monotonic() - started)
            assert answer.status_code == 200, answer.text
        redis_server.resume()
        assert wait_for(lambda: status(f"{server.url}/readyz") == 200, 10)
        # Within a second or so of Redis answering, requests take from the shared budget again.
        assert wait_for(lambda: stateless_echo(server).status_code == 200
                        and "rate limit enforced again" in server.log.read_text(), 5)  # fmt: skip
        log = server.log.read_text()
    finally:
        redis_server.resume()
        server.stop()
    assert max(timings) < ANSWER_WITHIN
    assert sorted(timings)[len(timings) // 2] < TIMEOUT_SECONDS / 2, "requests kept waiting on the absent budget"
    assert log.count("rate limit not enforced") == 1
    assert log.count("rate limit enforced again") == 1


def stateless_echo(server: RunningServer) -> httpx.Response:
    return stateless_post(f"{server.url}/mcp", "tools/call", {"name": "test_simple_text", "arguments": {}}, timeout=10)
