"""Two replicas sharing one real Redis, behind a round-robin proxy: sessions and streams move between them."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, free_port, start_server
from tests.integration.proxy import RoundRobinProxy
from tests.sse import events

pytestmark = pytest.mark.slow

INIT = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
        "clientInfo": {"name": "t", "version": "1"}}  # fmt: skip


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/install-redis.sh (make setup does)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while (
        subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG"
    ):
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


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


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"Accept": "application/json, text/event-stream", "Connection": "close", **(headers or {})}
    return httpx.post(f"{url}/mcp", json=body, headers=sent, timeout=10)


def open_session(url: str) -> dict[str, str]:
    opened = post(url, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
    return {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}


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
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "test_sampling",
                                                                          "arguments": {"prompt": "hi"}}}  # fmt: skip
    with (
        httpx.Client(timeout=15) as client,
        client.stream(
            "POST", f"{first}/mcp", json=call, headers={**session, "Accept": "application/json, text/event-stream"}
        ) as stream,
    ):
        buffer = ""
        asked: dict[str, Any] | None = None
        result: dict[str, Any] | None = None
        for chunk in stream.iter_text():
            buffer += chunk
            for _, message in events(buffer):
                if message and message.get("method") == "sampling/createMessage" and asked is None:
                    asked = message
                    answer = {"jsonrpc": "2.0", "id": message["id"], "result": {
                        "role": "assistant", "content": {"type": "text", "text": "from replica two"},
                        "model": "m"}}  # fmt: skip
                    assert post(second, answer, session).status_code == 202  # answered through the OTHER replica
                if message and message.get("id") == 7:
                    result = message
            if result:
                break
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
