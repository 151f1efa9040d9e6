"""What the session stores keep of event streams: a stream is found only by the session that opened it (on any
replica, with Redis), a finished stream stays resumable a short while among the session's latest few, and a stream
the session lets go is gone at once (its Redis key too). Both stores, the Redis one against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import redis
from app.sessions import Session, SessionStore
from app.sessions.backend import session_backend
from app.sessions.redis import RedisSessionStore
from app.sessions.store import SessionBackend
from app.settings import Settings
from tests.redis_server import RedisServer
from tests.scenarios import eventually, run

KEEP_SECONDS = 1  # how long the stores of these tests keep a finished stream
MOST = 3  # how many finished streams a session of these tests keeps


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def redis_store(url: str) -> RedisSessionStore:
    built = session_backend(Settings(redis_url=url))
    assert isinstance(built, RedisSessionStore)  # its client is configured as the server's
    return RedisSessionStore(
        built.redis, max_sessions=10, idle_seconds=60, keep_finished_seconds=KEEP_SECONDS, max_finished_streams=MOST
    )


def memory_store() -> SessionStore:
    return SessionStore(max_sessions=10, idle_seconds=60, keep_finished_seconds=KEEP_SECONDS, max_finished_streams=MOST)


async def new_session(store: SessionBackend, principal: str) -> Session:
    return await store.create(
        protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal=principal
    )


@pytest.mark.slow
def test_a_redis_stream_is_found_by_its_own_session_on_any_replica_and_by_no_other(redis_url: str) -> None:
    async def scenario() -> None:
        here, there = redis_store(redis_url), redis_store(redis_url)  # two replicas
        try:
            owner = await new_session(here, "limited")
            stream = here.new_stream(owner)
            await stream.append(b"")
            await stream.append(b"private")
            await here.finish_stream(owner, stream)

            copy = await there.get(owner.id)  # the owner, come back on the other replica
            assert copy is not None
            found = await there.find_stream(copy, stream.id)
            assert found is not None
            assert [event.data async for event in found.follow(after=1)] == [b"private"]

            for intruder in (await new_session(there, "other"), await new_session(there, "limited")):
                assert await there.find_stream(intruder, stream.id) is None  # as for a stream that never was
                assert await there.find_stream(intruder, "0123456789abcdef") is None
        finally:
            await here.close()
            await there.close()

    run(scenario)


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.slow)])
def test_a_session_keeps_its_latest_finished_streams_a_short_while(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url: str | None = request.getfixturevalue("redis_url") if backend == "redis" else None
    client = redis.Redis.from_url(url) if url else None

    def in_redis(stream_id: str) -> bool:
        return client is not None and bool(client.exists(f"erlmcp:events:{stream_id}"))

    async def scenario() -> None:
        store: SessionBackend = redis_store(url) if url else memory_store()
        try:
            session = await new_session(store, "p")
            streams = [store.new_stream(session) for _ in range(MOST + 2)]
            running = store.new_stream(session)
            for stream in [*streams, running]:
                await stream.append(b"")
            for stream in streams:
                await store.finish_stream(session, stream)

            # The latest MOST finished streams stay; the older ones are let go at once; a running one stays.
            assert list(session.streams) == [stream.id for stream in streams[-MOST:]] + [running.id]
            if client is not None:
                assert [in_redis(stream.id) for stream in streams] == [False] * 2 + [True] * MOST
                assert all(0 < int(client.ttl(f"erlmcp:events:{s.id}")) <= KEEP_SECONDS for s in streams[-MOST:])
                assert int(client.ttl(f"erlmcp:events:{running.id}")) > KEEP_SECONDS

            # ... for a short while: then they are let go too.
            assert await eventually(lambda: list(session.streams) == [running.id])
            assert await eventually(lambda: not any(in_redis(stream.id) for stream in streams))

            # A stream the session lets go (a GET stream its next GET replaces) is gone at once.
            await store.finish_stream(session, running)
            await store.drop_stream(session, running)
            assert session.streams == {}
            assert not in_redis(running.id)
        finally:
            await store.close()

    try:
        run(scenario)
    finally:
        if client is not None:
            client.close()
