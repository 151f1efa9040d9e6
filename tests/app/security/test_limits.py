"""Limits per key and per token audience: the option syntax, the buckets and windows that take a client's own
limit, the gate that picks it (the key file as it is now), the settings, and the session stores' quota."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from app.jsonrpc import parse_message
from app.observability.metrics import Metrics
from app.security.auth import ApiKeyAuthenticator, Authenticator
from app.security.gate import Caller, Gate
from app.security.keys import KeyFileError, parse_key_file
from app.security.limits import LimitOverrides, Limits, parse_limits
from app.security.origin import OriginPolicy
from app.security.ratelimit import RedisTokenBuckets, TokenBuckets, WindowLimiter
from app.sessions import SessionQuotaError, SessionStore
from app.sessions.redis import RedisSessionStore
from app.settings import Settings
from tests.redis_server import RedisServer

KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
DEFAULTS = Limits(rate=20.0, burst=100, initialize=600, sessions=100)


# -- the option syntax ------------------------------------------------------------------------------------------


def test_limits_are_written_as_comma_separated_name_value_pairs_in_any_order() -> None:
    assert parse_limits("sessions=500,rate=50,initialize=600,burst=200") == LimitOverrides(50.0, 200, 600, 500)
    assert parse_limits("rate=0.5") == LimitOverrides(rate=0.5)
    assert parse_limits("rate=0,sessions=0") == LimitOverrides(rate=0.0, sessions=0)  # no limit, no quota
    assert parse_limits("") == LimitOverrides()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bursts=9", "unknown option 'bursts' \\(options: rate, burst, initialize, sessions\\)"),
        ("rate=5,rate=6", "the option 'rate' is given twice"),
        ("rate=fast", "rate='fast' cannot be used: rate must be 0 \\(no limit\\) or a number of requests a second"),
        ("rate=-1", "rate='-1' cannot be used"),
        ("rate=nan", "rate='nan' cannot be used"),
        ("rate=0.0001", "rate='0.0001' cannot be used"),
        ("burst=0", "burst='0' cannot be used: burst must be a whole number of requests at once, from 1 to"),
        ("burst=2.5", "burst='2.5' cannot be used"),
        ("initialize=0", "initialize='0' cannot be used"),
        ("sessions=-1", "sessions='-1' cannot be used"),
        ("sessions=99999999", "sessions='99999999' cannot be used"),
        ("rate", "limit 1 is not name=value"),
    ],
)
def test_a_wrong_limit_is_refused_saying_what_is_expected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_limits(text)


def test_a_key_in_the_limits_field_is_not_quoted_in_the_error() -> None:
    """A key written in the fourth field by mistake must not end up in the log that reports the line."""
    with pytest.raises(KeyFileError) as refused:
        parse_key_file(f"ci * {KEY_A} {KEY_B}\n")
    assert KEY_B not in str(refused.value)
    assert KEY_A not in str(refused.value)
    assert "line 1 (key 'ci'): limit 1 is not name=value" in str(refused.value)


def test_overrides_keep_the_defaults_they_do_not_set() -> None:
    assert LimitOverrides(burst=5).applied_to(DEFAULTS) == Limits(rate=20.0, burst=5, initialize=600, sessions=100)
    assert LimitOverrides().applied_to(DEFAULTS) == DEFAULTS
    assert str(LimitOverrides(rate=0.5, sessions=0)) == "rate=0.5,sessions=0"
    assert str(DEFAULTS) == "rate=20,burst=100,initialize=600,sessions=100"


# -- buckets and windows with a client's own limit ------------------------------------------------------------


def test_a_bucket_takes_the_clients_own_rate_and_burst() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])

    async def scenario() -> list[float]:
        return [
            *[await buckets.take("wide", burst=5, rate=10.0) for _ in range(6)],  # five at once, then 10 a second
            *[await buckets.take("default") for _ in range(4)],  # three at once, then 2 a second
            await buckets.take("unlimited", 1000, rate=0.0),  # rate 0: no limit, whatever the cost
            await buckets.take("narrow", 2, burst=1),  # a batch over this client's burst: never
        ]

    waits = asyncio.run(scenario())
    assert waits[:6] == [0.0] * 5 + [pytest.approx(0.1)]
    assert waits[6:10] == [0.0, 0.0, 0.0, 0.5]
    assert waits[10] == 0.0
    assert waits[11] == math.inf


def test_a_window_takes_the_clients_own_limit_even_when_it_was_lowered_meanwhile() -> None:
    now = [0.0]
    window = WindowLimiter(2, window=60.0, clock=lambda: now[0])
    assert [window.allow("a", 4) for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, 60.0]
    assert [window.allow("b") for _ in range(3)] == [0.0, 0.0, 60.0]  # the default of 2
    now[0] = 10.0
    # the limit of "a" lowered to 1 with four events in the window: the next waits until three of them left it
    assert window.allow("a", 1) == 50.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_redis_buckets_take_the_clients_own_rate_and_burst(redis_server: RedisServer) -> None:
    async def scenario() -> list[float]:
        client = Redis.from_url(redis_server.url)
        buckets = RedisTokenBuckets(client, rate=0.001, burst=2)
        try:
            return [
                *[await buckets.take("wide", burst=4) for _ in range(5)],
                *[await buckets.take("default") for _ in range(3)],
                await buckets.take("unlimited", 50, rate=0.0),
            ]
        finally:
            await client.aclose()

    waits = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert waits[:4] == [0.0] * 4
    assert waits[4] == pytest.approx(1000, abs=1)
    assert waits[5:7] == [0.0, 0.0]
    assert waits[7] == pytest.approx(1000, abs=1)
    assert waits[8] == 0.0


# -- the gate: whose limits, from where ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gate_with(key_file: Path, clock: Clock, audiences: list[tuple[str, LimitOverrides]] | None = None) -> Gate:
    keys = ApiKeyAuthenticator(parse_key_file(key_file.read_text()), source=key_file, clock=clock)
    return Gate(
        authenticator=Authenticator(keys, audience_limits=audiences or []),
        origins=OriginPolicy(bind_host="127.0.0.1", allowed_hosts=[], allowed_origins=[]),
        metrics=Metrics("test"),
        max_message_bytes=1000,
        defaults=DEFAULTS,
        limiter=TokenBuckets(DEFAULTS.rate, DEFAULTS.burst),
    )


def test_the_gate_holds_a_key_to_the_limits_the_key_file_gives_it_now(tmp_path: Path) -> None:
    key_file, clock = tmp_path / "keys", Clock()
    key_file.write_text(f"a * {KEY_A} burst=2,sessions=3\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock)

    async def admitted(key: str) -> Caller:
        caller = await gate.admit({"authorization": f"Bearer {key}", "host": "127.0.0.1"}, "127.0.0.1")
        assert isinstance(caller, Caller), caller
        return caller

    a, b = asyncio.run(admitted(KEY_A)), asyncio.run(admitted(KEY_B))
    assert gate.limits(a) == Limits(rate=20.0, burst=2, initialize=600, sessions=3)
    assert gate.limits(b) == DEFAULTS
    assert gate.session_quota(a) == 3
    assert gate.limits(Caller("anonymous", address="10.0.0.1")) == DEFAULTS

    key_file.write_text(f"a * {KEY_A} initialize=1\nb * {KEY_B} sessions=0\n")
    clock.now = 2.0  # the file is looked at again at most once a second
    assert gate.limits(a) == Limits(rate=20.0, burst=100, initialize=1, sessions=100)  # a caller admitted before
    assert gate.session_quota(b) == 0
    assert gate.may_initialize(a) is None
    refused = gate.may_initialize(a)
    assert refused is not None
    assert "initialize is limited" in refused.error.message


def test_a_rate_limited_key_is_refused_by_the_gate_after_its_own_burst(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"a * {KEY_A} burst=2\nb * {KEY_B} rate=0\n")
    gate = gate_with(key_file, Clock())
    ping = parse_message(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')

    async def screened(principal: str, times: int) -> list[bool]:
        return [await gate.screen(Caller(principal), ping) is None for _ in range(times)]

    assert asyncio.run(screened("key:a", 3)) == [True, True, False]
    assert asyncio.run(screened("key:b", 300)) == [True] * 300  # rate=0: past the default burst of 100


def test_a_token_is_held_to_the_limits_of_the_first_configured_audience_it_carries(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"a * {KEY_A}\n")
    platform, batch = LimitOverrides(burst=500), LimitOverrides(burst=5)
    authenticator = gate_with(key_file, Clock(), [("platform", platform), ("batch", batch)]).authenticator
    assert authenticator.token_limits(("https://mcp.test", "batch", "platform")) == platform  # the mapping's order
    assert authenticator.token_limits(("https://mcp.test", "batch")) == batch
    assert authenticator.token_limits(("https://mcp.test",)) == LimitOverrides()
    assert authenticator.key_limits("jwt:0123") is None  # only key principals look at the key file
    assert authenticator.key_limits("key:gone") is None


# -- settings ---------------------------------------------------------------------------------------------------


def test_audience_limits_come_as_json_and_are_checked_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    public_key = tmp_path / "issuer.pem"  # (only its name is needed to turn tokens on in the settings)
    monkeypatch.setenv("ERLMCP_JWT_PUBLIC_KEY_FILE", str(public_key))
    monkeypatch.setenv("ERLMCP_JWT_ISSUER", "https://issuer.test")
    monkeypatch.setenv("ERLMCP_JWT_AUDIENCE", "https://mcp.test")
    monkeypatch.setenv("ERLMCP_JWT_AUDIENCE_LIMITS", '{"platform": "burst=500,sessions=1000", "batch": "rate=1"}')
    settings = Settings()
    assert settings.audience_limits == [
        ("platform", LimitOverrides(burst=500, sessions=1000)),
        ("batch", LimitOverrides(rate=1.0)),
    ]
    monkeypatch.setenv("ERLMCP_JWT_AUDIENCE_LIMITS", '{"platform": "bursts=500"}')
    with pytest.raises(ValidationError, match="the limits of the audience 'platform': unknown option 'bursts'"):
        Settings()
    monkeypatch.setenv("ERLMCP_JWT_AUDIENCE_LIMITS", '{"platform": "burst=500"}')
    monkeypatch.delenv("ERLMCP_JWT_PUBLIC_KEY_FILE")
    with pytest.raises(ValidationError, match="jwt_audience_limits is set but JWT tokens are off"):
        Settings()


def test_the_default_limits_are_the_settings_and_initialize_allows_ten_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RATE_LIMIT_PER_SECOND", "RATE_LIMIT_BURST", "INITIALIZE_PER_MINUTE", "MAX_SESSIONS_PER_PRINCIPAL"):
        monkeypatch.delenv(f"ERLMCP_{name}", raising=False)
    assert Settings().default_limits == Limits(rate=0.0, burst=100, initialize=600, sessions=100)
    assert Settings(rate_limit_per_second=20, initialize_per_minute=60).default_limits.initialize == 60


# -- the session stores take a principal's own quota --------------------------------------------------------------


async def opened(store: SessionStore | RedisSessionStore, owner: str, quota: int | None, count: int) -> list[str]:
    outcomes = []
    for _ in range(count):
        try:
            await store.create(protocol_version="2025-11-25", client_info={}, client_capabilities={},
                               principal=owner, owner=owner, quota=quota)  # fmt: skip
            outcomes.append("ok")
        except SessionQuotaError as exc:
            outcomes.append(f"quota {exc.limit}")
    return outcomes


def test_the_memory_store_counts_sessions_against_each_owners_own_quota() -> None:
    async def scenario() -> tuple[list[str], ...]:
        store = SessionStore(max_sessions=100, idle_seconds=60, max_sessions_per_owner=2)
        unlimited = SessionStore(max_sessions=100, idle_seconds=60, max_sessions_per_owner=0)
        return (
            await opened(store, "key:raised", 4, 5),
            await opened(store, "key:default", None, 3),
            await opened(store, "key:none", 0, 5),
            await opened(unlimited, "key:lowered", 1, 2),  # a quota of its own where the default has none
        )

    raised, default, none, lowered = asyncio.run(scenario())
    assert raised == ["ok"] * 4 + ["quota 4"]
    assert default == ["ok", "ok", "quota 2"]
    assert none == ["ok"] * 5
    assert lowered == ["ok", "quota 1"]


@pytest.mark.slow
def test_the_redis_store_counts_sessions_against_each_owners_own_quota(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[list[str], ...]:
        store = RedisSessionStore(Redis.from_url(redis_server.url), max_sessions=100, idle_seconds=60,
                                  max_sessions_per_owner=0)  # fmt: skip
        try:
            return (
                await opened(store, "key:lowered", 1, 2),  # a quota of its own where the default has none
                await opened(store, "key:raised", 3, 4),
                await opened(store, "key:default", None, 4),
            )
        finally:
            await store.close()

    lowered, raised, default = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert lowered == ["ok", "quota 1"]
    assert raised == ["ok"] * 3 + ["quota 3"]
    assert default == ["ok"] * 4
