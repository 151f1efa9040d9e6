"""A replica serves the sessions it holds from its own copy, with no Redis command, while that copy is fresh: read
from (or written to) Redis less than the slack ago (a second at most), with the session bus subscribed all along.
What another replica changes or deletes reaches the copy over the bus; a replica whose bus was cut reads Redis until
it listens again. Against a real redis-server, counting the commands it ran."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from app.sessions import Session
from app.sessions import redis as redis_sessions
from app.sessions.backend import session_backend
from app.sessions.redis import RedisSessionStore
from app.settings import Settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

IDLE = 60  # seconds: the slack is then its most, a second
SLACK = min(redis_sessions._REFRESH_SLACK_SECONDS, IDLE / 10)
RESUBSCRIBED = "the session bus subscribed again; each session is read from Redis before its copy serves again"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def replica(url: str, *, client: Redis | None = None, check_seconds: float = 60) -> RedisSessionStore:
    """A replica's store; its background check stays quiet (every ``check_seconds``) while commands are counted."""
    redis = Redis.from_url(url) if client is None else client
    return RedisSessionStore(redis, max_sessions=100, idle_seconds=IDLE, check_seconds=check_seconds)


@contextlib.asynccontextmanager
async def two_replicas(url: str) -> AsyncIterator[tuple[RedisSessionStore, RedisSessionStore]]:
    """Two replicas' stores on one Redis, closed after."""
    here, there = replica(url), replica(url)
    try:
        yield here, there
    finally:
        await here.close()
        await there.close()


async def read_overlapping(
    server: RedisServer, store: RedisSessionStore, session_id: str, meanwhile: Callable[[], Awaitable[None]]
) -> None:
    """A get on ``store`` whose read of the record is answered before ``meanwhile`` ends the session: it still finds
    the session (it existed when read), and the next get reads Redis again (one GETEX) and finds it gone, instead of
    serving the copy that read left."""
    read = store._read

    async def read_then(key: str) -> bytes | None:
        raw = await read(key)  # the record, read before ...
        await meanwhile()  # ... the session ends
        return raw

    store._read = read_then  # type: ignore[method-assign]
    try:
        assert await store.get(session_id) is not None
    finally:
        store._read = read  # type: ignore[method-assign]
    counted(server)
    assert await store.get(session_id) is None
    assert counted(server) == {"getex": 1}


async def open_session(store: RedisSessionStore) -> Session:
    await store.start()
    return await store.create(protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="k")


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def counted(server: RedisServer) -> dict[str, int]:
    """The commands Redis ran since the last call (``CONFIG RESETSTAT``)."""
    commands = server.commands()
    server.cli("CONFIG", "RESETSTAT")
    return commands


def copy_on(store: RedisSessionStore, session_id: str) -> Session | None:
    """The copy of a session a replica holds now (None: none), looked at without a command."""
    return next((session for session in store.all() if session.id == session_id), None)


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def past(moment: float) -> None:
    """Wait until the monotonic clock passes ``moment``."""
    while time.monotonic() <= moment:
        await asyncio.sleep(0.02)


async def record_in_redis(store: RedisSessionStore, session_id: str) -> dict[str, Any]:
    raw = await store.redis.get(f"erlmcp:session:{session_id}")
    assert raw is not None
    record: dict[str, Any] = orjson.loads(raw)
    return record


def test_a_request_within_the_slack_sends_no_command_and_one_after_it_one_getex(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = replica(redis_server.url)
        try:
            session = await open_session(store)
            written = time.monotonic()  # (after the create: its record was written then)
            counted(redis_server)
            for _ in range(3):  # requests that change nothing
                assert await store.get(session.id) is session
                await store.save(session)
            assert counted(redis_server) == {}
            await past(written + SLACK)
            assert await store.get(session.id) is session
            await store.save(session)
            assert counted(redis_server) == {"getex": 1}  # the record and its idle time, once per slack
            assert await store.get(session.id) is session
            await store.save(session)
            assert counted(redis_server) == {}
        finally:
            await store.close()

    run(scenario)


def test_a_change_on_one_replica_reaches_the_copy_of_another_over_the_bus(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url) as (here, there):
            session = await open_session(here)
            assert await there.get(session.id) is not None  # (there holds a copy now)
            found = await here.get(session.id)
            assert found is session
            found.log_level = "debug"  # logging/setLevel
            found.subscriptions.add("file:///notes.txt")  # resources/subscribe
            await here.save(found)
            copy = copy_on(there, session.id)
            assert copy is not None
            await until(lambda: copy.log_level == "debug")  # delivered by the bus
            assert copy.subscriptions == {"file:///notes.txt"}
            counted(redis_server)
            assert await there.get(session.id) is copy
            await there.save(copy)  # a request there that changed nothing: nothing to write
            assert counted(redis_server) == {}
            record = await record_in_redis(here, session.id)
            assert (record["log_level"], record["subscriptions"]) == ("debug", ["file:///notes.txt"])

    run(scenario)


def test_a_change_from_another_replica_keeps_what_a_request_here_changed_and_did_not_save_yet(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url) as (here, there):
            session = await open_session(here)
            copy = await there.get(session.id)
            assert copy is not None
            running = await here.get(session.id)  # logging/setLevel runs here ...
            assert running is session
            running.log_level = "warning"
            copy.subscriptions.add("file:///notes.txt")  # ... while resources/subscribe ends there
            await there.save(copy)
            await until(lambda: running.subscriptions == {"file:///notes.txt"})
            assert running.log_level == "warning"  # not undone by the other replica's record
            await here.save(running)  # setLevel ends: its record has both changes
            record = await record_in_redis(here, session.id)
            assert (record["log_level"], record["subscriptions"]) == ("warning", ["file:///notes.txt"])

    run(scenario)


def test_a_session_deleted_on_one_replica_is_not_served_from_the_copy_of_another(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url) as (here, there):
            session = await open_session(here)
            copy = await there.get(session.id)
            assert copy is not None
            counted(redis_server)
            assert await there.get(session.id) is copy
            assert counted(redis_server) == {}  # there serves it from its copy
            assert await here.delete(session.id)
            await until(lambda: copy_on(there, session.id) is None)  # the "deleted" message arrived
            counted(redis_server)
            assert await there.get(session.id) is None
            assert counted(redis_server) == {"getex": 1}
            assert await there.get(session.id) is None

    run(scenario)


def test_a_read_under_way_while_another_replica_deletes_the_session_is_not_served_again_from_the_copy(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url) as (here, there):
            session = await open_session(here)
            # A session there holds, whose answer over the bus tells that there read every message sent before it.
            marker = await open_session(there)
            answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            marker.pending["srv-1"] = answered
            marker_here = await here.get(marker.id)
            assert marker_here is not None

            async def deleted_here() -> None:  # "deleted" sent while the reply is on its way
                assert await here.delete(session.id)
                await here.deliver_response(marker_here, "srv-1", {"result": {}})
                await asyncio.wait_for(answered, 5)

            await read_overlapping(redis_server, there, session.id, deleted_here)

    run(scenario)


def test_a_read_under_way_while_the_same_replica_deletes_the_session_is_not_served_again_from_the_copy(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        async with two_replicas(redis_server.url) as (here, there):
            session = await open_session(here)

            async def deleted_there() -> None:  # a DELETE on the same replica
                assert await there.delete(session.id)

            await read_overlapping(redis_server, there, session.id, deleted_there)

    run(scenario)


def test_a_replica_whose_bus_is_down_reads_redis_on_every_request(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        # (no retry: the cut subscription fails, and the bus subscribes again only check_seconds / 2 later)
        client = Redis.from_url(redis_server.url, retry=Retry(NoBackoff(), 0))
        store = replica(redis_server.url, client=client)
        try:
            session = await open_session(store)
            counted(redis_server)
            assert await store.get(session.id) is session
            assert counted(redis_server) == {}
            redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
            deadline = time.monotonic() + 5
            while await store.unavailable() is None:  # until the store knows its bus is gone
                assert time.monotonic() < deadline, "the cut bus was never noticed"
                await asyncio.sleep(0.01)
            counted(redis_server)
            for _ in range(2):
                assert await store.get(session.id) is session
            assert counted(redis_server) == {"getex": 2}
        finally:
            await store.close()

    run(scenario)


def test_a_replica_whose_bus_subscribed_again_reads_each_session_once_before_serving_it_from_its_copy(
    redis_server: RedisServer,
) -> None:
    async def scenario() -> None:
        built = session_backend(Settings(redis_url=redis_server.url))  # the server's client: it reconnects at once
        assert isinstance(built, RedisSessionStore)
        store = replica(redis_server.url, client=built.redis)
        try:
            session = await open_session(store)
            counted(redis_server)
            assert await store.get(session.id) is session
            assert counted(redis_server) == {}
            with capture_logs() as logs:
                redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub")
                await until(lambda: any(entry["event"] == RESUBSCRIBED for entry in logs))
            counted(redis_server)
            assert await store.get(session.id) is session  # a message may have been missed meanwhile
            assert counted(redis_server) == {"getex": 1}
            assert await store.get(session.id) is session
            assert counted(redis_server) == {}
        finally:
            await store.close()

    run(scenario)
