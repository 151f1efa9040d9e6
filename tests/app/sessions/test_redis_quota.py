"""The per-client session quota in Redis: one count for every replica, checked and reserved atomically, freed by
DELETE and by expiry; the hot path (get, save) pays nothing for it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.sessions import Session, SessionLimitError, SessionQuotaError
from app.sessions.redis import RedisSessionStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def replica(url: str, *, quota: int = 2, idle: float = 60, check_seconds: float = 1.0) -> RedisSessionStore:
    return RedisSessionStore(
        Redis.from_url(url),
        max_sessions=100,
        idle_seconds=idle,
        max_sessions_per_owner=quota,
        check_seconds=check_seconds,
    )


async def open_session(store: RedisSessionStore, principal: str | None = "key:a", owner: str | None = None) -> Session:
    return await store.create(
        protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal=principal, owner=owner
    )


def owner_key(owner: str) -> str:
    return "erlmcp:owner:" + hashlib.sha256(owner.encode()).hexdigest()


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def members(store: RedisSessionStore, owner: str) -> set[str]:
    return {text(member) for member in await store.redis.smembers(owner_key(owner))}


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def test_a_client_at_its_quota_is_refused_on_every_replica_and_another_client_is_not(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        here, there = replica(redis_server.url), replica(redis_server.url)
        try:
            first, second = await open_session(here), await open_session(here)
            with pytest.raises(SessionQuotaError) as refused:
                await open_session(there)  # the other replica sees the same count
            assert isinstance(refused.value, SessionLimitError)
            assert (refused.value.limit, refused.value.owner) == (2, "key:a")
            assert "this client already holds 2 sessions" in str(refused.value)
            assert "ERLMCP_MAX_SESSIONS_PER_PRINCIPAL" in str(refused.value)
            await open_session(there, "key:b")
            assert await members(here, "key:a") == {first.id, second.id}
            keys = {text(key) for key in await here.redis.keys("erlmcp:owner:*")}
            assert keys == {owner_key("key:a"), owner_key("key:b")}  # hashed: the name is not in the key
            assert 60 <= await here.redis.ttl(owner_key("key:a")) <= 120  # at least the idle time
        finally:
            await here.close()
            await there.close()

    run(scenario)


def test_the_owner_when_given_is_counted_instead_of_the_principal(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = replica(redis_server.url, quota=1)
        try:
            await open_session(store, "anonymous", owner="ip:10.0.0.1")
            await open_session(store, "anonymous", owner="ip:10.0.0.2")
            with pytest.raises(SessionQuotaError):
                await open_session(store, "anonymous", owner="ip:10.0.0.1")
            opened = await open_session(store, "anonymous", owner="ip:10.0.0.3")
            copy = await replica_get(redis_server.url, opened.id)
            assert copy is not None
            assert (copy.principal, copy.owner) == ("anonymous", "ip:10.0.0.3")  # in the record, for every replica
        finally:
            await store.close()

    run(scenario)


async def replica_get(url: str, session_id: str) -> Session | None:
    other = replica(url)
    try:
        return await other.get(session_id)
    finally:
        await other.close()


def test_without_an_owner_or_with_no_quota_nothing_is_counted(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        limited, unlimited = replica(redis_server.url, quota=1), replica(redis_server.url, quota=0)
        try:
            for _ in range(3):
                await open_session(limited, principal=None)
                await open_session(unlimited, "key:a")
            assert await limited.redis.keys("erlmcp:owner:*") == []
            assert len(await limited.redis.keys("erlmcp:session:*")) == 6
        finally:
            await limited.close()
            await unlimited.close()

    run(scenario)


def test_two_concurrent_creates_one_below_the_quota_exactly_one_wins(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        here, there = replica(redis_server.url, quota=3), replica(redis_server.url, quota=3)
        try:
            for round_ in range(20):
                owner = f"key:{round_}"
                await open_session(here, owner)
                await open_session(there, owner)
                outcomes = await asyncio.gather(
                    open_session(here, owner), open_session(there, owner), return_exceptions=True
                )
                assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Session", "SessionQuotaError"]
                assert len(await members(here, owner)) == 3
        finally:
            await here.close()
            await there.close()

    run(scenario)


def test_a_deleted_session_frees_its_slot_whichever_replica_deletes_it(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        here, there = replica(redis_server.url), replica(redis_server.url)
        try:
            first, second = await open_session(here), await open_session(here)
            copy = await there.get(first.id)
            assert copy is not None
            copy.log_level = "debug"
            await there.save(copy)  # the record written again keeps its owner
            assert await there.delete(first.id)
            assert await members(here, "key:a") == {second.id}
            third = await open_session(there)  # the slot is free
            with pytest.raises(SessionQuotaError):
                await open_session(here)
            assert await there.delete(second.id)  # a replica that never saw the session
            assert await members(here, "key:a") == {third.id}
            assert await here.delete(third.id)
            assert await here.redis.exists(owner_key("key:a")) == 0  # nothing left behind
        finally:
            await here.close()
            await there.close()

    run(scenario)


def test_an_expired_session_frees_its_slot(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = replica(redis_server.url, quota=1, idle=1)
        try:
            old = await open_session(store)
            with pytest.raises(SessionQuotaError):
                await open_session(store)
            await asyncio.sleep(1.3)  # Redis expires the record after the idle time; no one deleted it
            new = await open_session(store)
            assert await members(store, "key:a") == {new.id}  # the expired one is no longer counted
            assert old.id != new.id
        finally:
            await store.close()

    run(scenario)


def test_the_quota_holds_for_sessions_kept_alive_longer_than_the_owner_set_would_last(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        store = replica(redis_server.url, quota=1, idle=1, check_seconds=0.2)
        try:
            await store.start()
            session = await open_session(store)
            deadline = time.monotonic() + 3.5  # well past the owner set's own TTL (twice the idle time)
            while time.monotonic() < deadline:
                assert await store.get(session.id) is not None  # the client keeps using it
                await asyncio.sleep(0.25)
            assert await store.redis.ttl(owner_key("key:a")) > 0  # refreshed by the replica that holds the session
            with pytest.raises(SessionQuotaError):
                await open_session(store)
        finally:
            await store.close()

    run(scenario)


def test_get_and_save_send_no_more_commands_than_before(redis_server: RedisServer) -> None:
    counted: dict[str, int] = {}

    async def scenario() -> None:
        store = replica(redis_server.url, check_seconds=60)  # the background check stays quiet meanwhile
        try:
            await store.start()
            session = await open_session(store)
            await asyncio.sleep(1.0)  # past the slack: the request reads Redis (within it, it would read nothing)
            redis_server.cli("CONFIG", "RESETSTAT")
            assert await store.get(session.id) is session
            await store.save(session)
            counted.update(redis_server.commands())
        finally:
            await store.close()

    run(scenario)
    assert counted == {"getex": 1}  # as without a quota: one GETEX, and no write for a record that did not change
