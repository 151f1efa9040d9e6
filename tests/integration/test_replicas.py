"""Two replicas sharing one real Redis, behind a round-robin proxy: sessions and streams move between them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from redis.client import Redis

from app.sessions.redis import _REFRESH_SLACK_SECONDS
from deployer.marketplace.proxy import RoundRobinProxy
from tests.conftest import RunningServer, start_server
from tests.integration.sessions import open_session, post, sample_across
from tests.sse import events

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningServer]]:
    env = {"ERLMCP_REDIS_URL": redis_url}
    servers = [start_server(tmp_path_factory.mktemp(f"replica{i}"), ["--no-auth", "--catalog", "conformance"], env)
               for i in range(2)]  # fmt: skip
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def proxy(replicas: list[RunningServer]) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy([server.port for server in replicas]) as running:
        yield running


def test_a_session_opened_on_one_replica_works_on_the_other(proxy: RoundRobinProxy) -> None:
    url = f"http://127.0.0.1:{proxy.port}"
    session = open_session(url)
    call = {"name": "test_simple_text", "arguments": {}}
    answers = [post(url, {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": call}, session)
               for i in range(1, 5)]  # fmt: skip
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert all(a.json()["result"]["content"][0]["text"].startswith("This is a simple") for a in answers)
    assert min(proxy.served.values()) >= 2  # both replicas answered for the one session
    level = post(url, {"jsonrpc": "2.0", "id": 9, "method": "logging/setLevel", "params": {"level": "error"}}, session)
    assert level.json()["result"] == {}
    assert httpx.delete(f"{url}/mcp", headers={**session, "Connection": "close"}).status_code == 200
    after = [post(url, {"jsonrpc": "2.0", "id": 10 + i, "method": "ping"}, session).status_code for i in range(2)]
    assert after == [404, 404]  # ended on both replicas


def commands_on(redis_url: str, session_id: str, requests: Iterator[None]) -> list[list[str]]:
    """The Redis commands (name first, lower-case) that touched a session's record while ``requests`` ran, whichever
    replica sent them (Redis's MONITOR; a sentinel command marks the end)."""
    client = Redis.from_url(redis_url)
    seen: list[list[str]] = []
    with client.monitor() as monitor:  # type: ignore[no-untyped-call]
        for _ in requests:
            pass
        client.echo("end of the requests")
        for item in monitor.listen():
            words = str(item["command"]).split()
            if words[:2] == ["ECHO", "end"]:
                break
            if any(word == f"erlmcp:session:{session_id}" for word in words):
                seen.append([words[0].lower(), *words[1:]])
    client.close()
    return seen


def test_tools_calls_read_a_session_at_most_once_a_slack_on_each_replica_and_a_change_of_log_level_writes_once(
    proxy: RoundRobinProxy, redis_url: str
) -> None:
    url = f"http://127.0.0.1:{proxy.port}"
    session = open_session(url)
    call = {"name": "test_simple_text", "arguments": {}}
    took: list[float] = []

    def calls() -> Iterator[None]:
        started = time.monotonic()
        for i in range(1, 21):
            assert post(url, {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": call}, session).is_success
            yield
        took.append(time.monotonic() - started)

    def set_level() -> Iterator[None]:
        level = {"jsonrpc": "2.0", "id": 99, "method": "logging/setLevel", "params": {"level": "error"}}
        assert post(url, level, session).json()["result"] == {}
        yield

    session_id = session["Mcp-Session-Id"]
    words = [words[0] for words in commands_on(redis_url, session_id, calls())]
    assert set(words) <= {"getex"}  # nothing written for a record no call changed
    # Each replica reads the session (GETEX) once a slack at most, and serves the other calls from its copy.
    at_most = len(proxy.served) * (1 + int(took[0] / _REFRESH_SLACK_SECONDS))
    assert len(words) <= at_most, (words, took)
    words = [words[0] for words in commands_on(redis_url, session_id, set_level())]
    assert words in (["set"], ["getex", "set"])  # read when that replica's copy is older than the slack


def test_a_stream_cut_on_one_replica_resumes_on_the_other_without_loss_or_duplicates(
    replicas: list[RunningServer],
) -> None:
    first, second = (f"http://127.0.0.1:{server.port}" for server in replicas)
    session = open_session(first)
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "test_reconnection", "arguments": {}}}
    cut = events(post(first, call, session).text)
    last_id = cut[-1][0]
    assert last_id is not None
    resumed = httpx.get(f"{second}/mcp", headers={**session, "Accept": "text/event-stream", "Last-Event-ID": last_id},
                        timeout=10)  # fmt: skip
    assert resumed.status_code == 200
    received = [message for _, message in cut + events(resumed.text) if message]
    logs = [m["params"]["data"] for m in received if m.get("method") == "notifications/message"]
    responses = [m for m in received if m.get("id") == 5]
    assert logs == ["Before disconnect", "After reconnect"]
    assert len(responses) == 1
    assert responses[0]["result"]["content"][0]["text"] == "Reconnection test completed"
    ids = [event_id for event_id, _ in cut + events(resumed.text) if event_id]
    assert len(ids) == len(set(ids))


def test_the_answer_to_a_server_request_reaches_the_replica_that_asked(replicas: list[RunningServer]) -> None:
    first, second = (f"http://127.0.0.1:{server.port}" for server in replicas)
    session = open_session(first)
    asked, result = sample_across(first, second, session)
    assert asked is not None
    assert result is not None
    assert result["result"]["content"][0]["text"] == "LLM response: from replica two"


def test_a_clients_rate_limit_holds_across_replicas_sharing_redis(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    keys = tmp_path_factory.mktemp("rate-keys") / "keys"
    keys.write_text("key-a-0123456789abcdef\nkey-b-0123456789abcdef\n")
    env = {"ERLMCP_REDIS_URL": redis_url, "ERLMCP_RATE_LIMIT_PER_SECOND": "0.01", "ERLMCP_RATE_LIMIT_BURST": "5"}
    pair = [start_server(tmp_path_factory.mktemp(f"rate{i}"), ["--api-key-file", str(keys)], env) for i in range(2)]
    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}

        def status(replica: RunningServer, key: str) -> int:
            headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
            return httpx.post(f"{replica.url}/mcp", json=body, headers=headers).status_code

        # ping without a session is a 400 once past the limit check: 429 is the limiter, anything else is not
        a = [status(pair[i % 2], "key-a-0123456789abcdef") for i in range(8)]
        b = [status(pair[i % 2], "key-b-0123456789abcdef") for i in range(5)]
    finally:
        for replica in pair:
            replica.stop()
    assert [code == 429 for code in a] == [False] * 5 + [True] * 3  # one budget of 5 across both replicas
    assert 429 not in b
