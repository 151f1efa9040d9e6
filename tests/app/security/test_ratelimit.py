"""Request budgets per client: token buckets, who a client is behind proxies, and the 429 on the wire."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from starlette.testclient import TestClient

from app.observability.metrics import Metrics
from app.security.clients import client_address, parse_networks
from app.security.ratelimit import LimiterUnavailable, RedisTokenBuckets, TokenBuckets
from app.settings import Settings
from app.wiring import create_app
from tests.redis_server import RedisServer

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


def test_a_bucket_lets_a_burst_through_then_holds_the_rate() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    waits = [asyncio.run(buckets.take("a")) for _ in range(4)]
    assert waits == [0.0, 0.0, 0.0, 0.5]  # three at once, the fourth must wait half a second at 2/s
    now[0] = 0.5
    assert asyncio.run(buckets.take("a")) == 0.0
    assert asyncio.run(buckets.take("b")) == 0.0  # another client has its own bucket


def test_a_cost_takes_that_many_tokens_at_once_or_none() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=5, clock=lambda: now[0])
    assert asyncio.run(buckets.take("a", 3)) == 0.0  # a batch of three: 2 tokens left
    assert asyncio.run(buckets.take("a", 3)) == 0.5  # one short: half a second at 2/s; nothing taken
    assert asyncio.run(buckets.take("a", 2)) == 0.0  # ... so the two are still there
    assert asyncio.run(buckets.take("a")) == 0.5
    now[0] = 1.5  # 3 tokens again
    assert asyncio.run(buckets.take("a", 3)) == 0.0


def test_a_cost_over_the_burst_can_never_be_taken_and_takes_nothing() -> None:
    buckets = TokenBuckets(rate=2.0, burst=5, clock=lambda: 0.0)
    assert asyncio.run(buckets.take("a", 6)) == math.inf
    assert asyncio.run(buckets.take("a", 5)) == 0.0  # the whole burst was still there
    assert asyncio.run(buckets.take("a", 0)) == 0.0
    with pytest.raises(ValueError, match="cost"):
        asyncio.run(buckets.take("a", -1))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_redis_buckets_take_a_cost_at_once_or_none_and_refuse_one_over_the_burst_forever(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> list[float]:
        client = Redis.from_url(redis_server.url)
        buckets = RedisTokenBuckets(client, rate=0.001, burst=5)  # refills 1 token in 1000 s: none during the test
        try:
            return [
                await buckets.take("a", 3),
                await buckets.take("a", 3),  # one short: nothing taken
                await buckets.take("a", 2),
                await buckets.take("a"),
                await buckets.take("b", 6),  # over the burst: never
                await buckets.take("b", 5),  # ... and nothing was taken
                await buckets.take("b", 0),
            ]
        finally:
            await client.aclose()

    waits = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert waits[0] == 0.0
    assert waits[1] == pytest.approx(1000, abs=1)  # the missing token, at 0.001 per second
    assert waits[2] == 0.0
    assert waits[3] == pytest.approx(1000, abs=1)
    assert waits[4] == math.inf
    assert waits[5:] == [0.0, 0.0]


@pytest.mark.slow
def test_redis_buckets_that_cannot_reach_redis_say_the_budget_is_unavailable(redis_server: RedisServer) -> None:
    async def scenario() -> float:
        client = Redis.from_url(redis_server.url, socket_timeout=2)
        buckets = RedisTokenBuckets(client, rate=10, burst=5)
        try:
            taken = await buckets.take("a")
            redis_server.kill()
            with pytest.raises(LimiterUnavailable, match="(?i)connect|closed|reset"):
                await buckets.take("a")
            return taken
        finally:
            await client.aclose()

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == 0.0


def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    proxies = parse_networks(["10.0.0.0/8"])
    forwarded = {"x-forwarded-for": "6.6.6.6, 1.2.3.4, 10.0.0.7"}
    assert client_address("10.0.0.9", forwarded, proxies) == "1.2.3.4"  # right-most hop that is not a proxy
    assert client_address("8.8.8.8", forwarded, proxies) == "8.8.8.8"  # not a proxy: the header is ignored
    assert client_address("10.0.0.9", {}, proxies) == "10.0.0.9"
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        parse_networks(["not-a-network"])


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    keys = tmp_path / "keys"
    keys.write_text("key-a-0123456789abcdef\nkey-b-0123456789abcdef\n")
    settings = Settings(api_key_file=keys, rate_limit_per_second=0.01, rate_limit_burst=5)
    with TestClient(create_app(settings, metrics=Metrics("test")), base_url="http://127.0.0.1") as client:
        yield client


def initialize(client: TestClient, key: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    return client.post("/mcp", json=body, headers=headers).status_code


def test_a_client_over_its_limit_gets_exactly_the_excess_as_429_and_another_is_unaffected(limited: TestClient) -> None:
    a = [initialize(limited, "key-a-0123456789abcdef") for _ in range(8)]
    b = [initialize(limited, "key-b-0123456789abcdef") for _ in range(5)]
    assert a == [200] * 5 + [429] * 3
    assert b == [200] * 5


def test_the_429_says_when_to_retry(limited: TestClient) -> None:
    headers = {"Authorization": "Bearer key-a-0123456789abcdef", "Accept": "application/json"}
    for _ in range(5):
        limited.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}, headers=headers)
    refused = limited.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": INIT}, headers=headers
    )
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "over its request rate" in refused.json()["error"]["message"]


def test_requests_on_a_websocket_share_the_clients_budget(limited: TestClient) -> None:
    headers = {"Authorization": "Bearer key-a-0123456789abcdef"}
    with limited.websocket_connect("ws://127.0.0.1/ws", subprotocols=["mcp"], headers=headers) as ws:
        ws.send_json({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
        answers = [ws.receive_json()]
        ws.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})  # notifications are not counted
        for number in range(1, 7):
            ws.send_json({"jsonrpc": "2.0", "id": number, "method": "ping"})
            answers.append(ws.receive_json())
    errors = [answer.get("error", {}).get("code") for answer in answers]
    assert errors == [None] * 5 + [-32029] * 2  # the burst of 5, then the budget holds
    assert answers[-1]["error"]["data"]["retryAfter"] >= 1
