"""A session's GET stream in Redis has one writer at a time. While its writer replica lives, no other adopts it;
once the writer looks gone (its liveness key expired: killed, or cut off from Redis), the first replica a client
resumes on adopts it and numbers its events on, any other is refused, and the replica that wrote it before writes
no more of it if it comes back. Against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import redis
from app.sessions import EventStream, Session
from app.sessions.backend import session_backend
from app.sessions.redis import RedisSessionStore
from app.settings import Settings
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


def replica(url: str, check_seconds: float = 1.0) -> RedisSessionStore:
    """A replica's store; it refreshes its liveness key every ``check_seconds``."""
    built = session_backend(Settings(redis_url=url))
    assert isinstance(built, RedisSessionStore)  # its client is configured as the server's
    return RedisSessionStore(built.redis, max_sessions=10, idle_seconds=60, check_seconds=check_seconds)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def resumed_on(store: RedisSessionStore, session_id: str, stream_id: str) -> tuple[Session, EventStream]:
    copy = await store.get(session_id)
    assert copy is not None
    found = await store.find_stream(copy, stream_id)
    assert found is not None
    assert found.standalone
    return copy, found


async def first_events(stream: EventStream, count: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async for event in stream.follow():
        got.append((event.id, event.data))
        if len(got) == count:
            break
    return got


def test_a_get_stream_is_adopted_once_and_only_when_its_writer_is_gone(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        # (the first refreshes its liveness key too seldom to bring it back within the test, once it is deleted)
        first, second, third = replica(redis_url, check_seconds=3600), replica(redis_url), replica(redis_url)
        try:
            session = await first.create(
                protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="p"
            )
            stream = first.new_stream(session, max_events=100, standalone=True)
            await stream.append(b"")
            await stream.append(b'{"n":1}')

            copy, found = await resumed_on(second, session.id, stream.id)
            assert not await second.adopt(copy, found)  # its writer lives

            client.delete(f"erlmcp:replica:{first.replica}")  # the writer looks gone (until its next refresh)
            assert await second.adopt(copy, found)
            other, also = await resumed_on(third, session.id, stream.id)
            assert not await third.adopt(other, also)  # adopted once: the adopter lives

            await found.append(b'{"n":2}')  # numbered on by the adopter
            await stream.append(b'{"stale":true}')  # the former writer, back: not written
            assert stream.superseded
            assert not found.superseded
            events = await first_events(also, 3)
            assert events == [(f"{stream.id}-1", b""), (f"{stream.id}-2", b'{"n":1}'), (f"{stream.id}-3", b'{"n":2}')]
            entries: Any = client.xrange(f"erlmcp:events:{stream.id}")
            assert b'{"stale":true}' not in [fields[b"data"] for _, fields in entries]
        finally:
            for store in (first, second, third):
                await store.close()

    try:
        run(scenario)
    finally:
        client.close()
