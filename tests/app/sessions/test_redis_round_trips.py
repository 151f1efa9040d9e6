"""What a request costs in Redis: nothing while the replica's copy of the session is fresh (see test_redis_cache.py),
else one ``GETEX`` (the record and its idle time refreshed in one command); and a write of the record only when the
request changed it (``logging/setLevel``, ``resources/subscribe``, ``notifications/initialized``; with the
``changed`` message for the other replicas, pipelined) or ran longer than the store lets a refresh wait. A Redis
without ``GETEX`` (older than 6.2) gets the ``GET`` and ``EXPIRE`` pipeline, told once in the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from app.sessions import Session
from app.sessions import redis as redis_sessions
from app.sessions.redis import RedisSessionStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


class RedisWithoutGetex(RedisServer):
    """A real redis-server that answers GETEX as an older Redis does: ``unknown command``."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._command += ["--rename-command", "GETEX", ""]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(params=["older than 6.2", "GETEX denied by an ACL"])
def old_redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server that does not run GETEX: ``unknown command``, or ``NOPERM`` from an ACL that allows the
    commands GETEX replaces (GET, EXPIRE) and not GETEX itself."""
    if request.param == "older than 6.2":
        server = RedisWithoutGetex(tmp_path).start()
    else:
        server = RedisServer(tmp_path).start()
        server.cli("ACL", "SETUSER", "default", "-getex")
    yield server
    server.stop()


def replica(url: str, *, idle: float = 60) -> RedisSessionStore:
    # (the background check stays quiet while commands are counted)
    return RedisSessionStore(Redis.from_url(url), max_sessions=100, idle_seconds=idle, check_seconds=60)


async def open_session(store: RedisSessionStore) -> Session:
    await store.start()
    return await store.create(protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="k")


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


async def past_the_slack(idle: float = 60) -> None:
    """Wait until what a replica last read or wrote is older than its slack: its next request reads Redis."""
    await asyncio.sleep(min(redis_sessions._REFRESH_SLACK_SECONDS, idle / 10))


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll ``condition`` until it holds (a message on the session bus was delivered); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def change_log_level(session: Session) -> None:
    session.log_level = "debug"  # logging/setLevel


def subscribe(session: Session) -> None:
    session.subscriptions.add("file:///notes.txt")  # resources/subscribe


def initialize(session: Session) -> None:
    session.initialized = True  # notifications/initialized


@pytest.mark.parametrize("change", [change_log_level, subscribe, initialize])
def test_a_request_that_changes_the_record_reads_with_one_getex_and_writes_it_once(
    redis_server: RedisServer, change: Callable[[Session], None]
) -> None:
    counted: dict[str, int] = {}

    async def scenario() -> None:
        here, there = replica(redis_server.url), replica(redis_server.url)
        try:
            session = await open_session(here)
            await past_the_slack()  # (a request within it would read nothing: see test_redis_cache.py)
            redis_server.cli("CONFIG", "RESETSTAT")
            found = await here.get(session.id)
            assert found is session
            change(found)
            await here.save(found)
            counted.update(redis_server.commands())
            copy = await there.get(session.id)  # another replica reads what changed
            assert copy is not None
            assert (copy.log_level, copy.subscriptions, copy.initialized) == (
                found.log_level,
                found.subscriptions,
                found.initialized,
            )
            redis_server.cli("CONFIG", "RESETSTAT")
            await here.get(session.id)
            await here.save(found)  # the next request changes nothing: nothing to write, nor to read yet
            assert redis_server.commands() == {}
        finally:
            await here.close()
            await there.close()

    run(scenario)
    assert counted == {"getex": 1, "set": 1, "publish": 1}  # (SET and PUBLISH pipelined: one round trip)


def test_a_request_that_changes_nothing_leaves_another_replicas_change_in_place(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        here, there = replica(redis_server.url), replica(redis_server.url)
        try:
            session = await open_session(here)
            running = await here.get(session.id)  # a tools/call starts here
            assert running is not None
            copy = await there.get(session.id)  # meanwhile, logging/setLevel on another replica
            assert copy is not None
            copy.log_level = "debug"
            await there.save(copy)
            await here.save(running)  # the tools/call ends: it changed nothing, so it writes nothing
            raw = await here.redis.get(f"erlmcp:session:{session.id}")
            assert raw is not None
            assert orjson.loads(raw)["log_level"] == "debug"
            await until(lambda: running.log_level == "debug")  # here's copy, once the bus delivered the change
            again = await here.get(session.id)
            assert again is not None
            assert again.log_level == "debug"
        finally:
            await here.close()
            await there.close()

    run(scenario)


def test_a_save_long_after_the_last_read_keeps_the_session_alive_for_the_idle_time(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = replica(redis_server.url, idle=2)  # (a refresh may wait a tenth of the idle time)
        try:
            session = await open_session(store)
            found = await store.get(session.id)  # a long tools/call starts
            assert found is not None
            await asyncio.sleep(1.0)  # and runs half the idle time
            redis_server.cli("CONFIG", "RESETSTAT")
            await store.save(found)  # it changed nothing, but the idle time counts from its end
            assert redis_server.commands() == {"expire": 1}
            assert await store.redis.pttl(f"erlmcp:session:{session.id}") > 1500
        finally:
            await store.close()

    run(scenario)


def test_a_redis_without_getex_gets_the_get_and_expire_pipeline_and_one_warning(
    old_redis_server: RedisServer,
) -> None:
    counted: dict[str, int] = {}

    async def scenario() -> None:
        store = replica(old_redis_server.url, idle=60)
        try:
            session = await open_session(store)
            await store.redis.expire(f"erlmcp:session:{session.id}", 5)
            with capture_logs() as records:
                for _ in range(3):
                    await past_the_slack()  # each request reads Redis
                    old_redis_server.cli("CONFIG", "RESETSTAT")
                    assert await store.get(session.id) is session
                    await store.save(session)
                    counted.update(old_redis_server.commands())
            assert await store.redis.ttl(f"erlmcp:session:{session.id}") > 5  # the idle time refreshed
        finally:
            await store.close()
        warnings = [record for record in records if "GETEX" in record["event"]]
        assert len(warnings) == 1, records
        assert warnings[0]["log_level"] == "warning"

    run(scenario)
    assert counted == {"get": 1, "expire": 1}  # the last of three requests: no GETEX tried again
