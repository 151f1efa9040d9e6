"""A session's GET stream in Redis has one writer at a time. While its writer replica lives, no other adopts it;
once the writer looks gone (its liveness key expired: killed, or cut off from Redis), the first replica a client
resumes on adopts it and numbers its events on, any other is refused, and the replica that wrote it before writes
no more of it if it comes back: it forgets its copy, and letting it go there leaves the adopter's stream alone. The
entry naming the adopter is no event: no reader ever gets it. Against a real redis-server."""

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


async def adopted(
    client: redis.Redis, first: RedisSessionStore, second: RedisSessionStore, *, max_events: int = 100
) -> tuple[Session, EventStream, EventStream]:
    """A session on ``first``, whose GET stream (keeping ``max_events``; two events written) ``second`` adopted once
    ``first`` looked gone: the session as ``first`` holds it, ``first``'s copy of the stream, and ``second``'s."""
    session = await first.create(protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="p")
    stream = first.new_stream(session, max_events=max_events, standalone=True)
    await stream.append(b'{"n":1}')
    await stream.append(b'{"n":2}')
    client.delete(f"erlmcp:replica:{first.replica}")
    copy, found = await resumed_on(second, session.id, stream.id)
    found.max_events = max_events
    assert await second.adopt(copy, found)
    return session, stream, found


def test_a_replica_forgets_its_copy_of_a_get_stream_another_adopted(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        first, second = replica(redis_url, check_seconds=3600), replica(redis_url)
        try:
            session, stream, _ = await adopted(client, first, second)
            await stream.append(b'{"stale":true}')  # the former writer, back: it learns it writes the stream no more
            assert stream.superseded
            assert stream.id not in session.streams
            now = await first.find_stream(session, stream.id)  # what the adopter writes, read from Redis
            assert now is not None
            assert now is not stream
            assert not now.superseded
        finally:
            for store in (first, second):
                await store.close()

    try:
        run(scenario)
    finally:
        client.close()


def test_letting_go_of_a_get_stream_another_replica_adopted_leaves_the_adopters_stream_and_reader(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        first, second = replica(redis_url, check_seconds=3600), replica(redis_url)
        try:
            session, stream, found = await adopted(client, first, second)
            await found.attach()  # a connection reads it, on the adopter
            # The former writer, back, ends its copy and lets it go (a new GET on it replaced the stream).
            await first.finish_stream(session, stream)
            await first.drop_stream(session, stream)
            assert stream.superseded
            assert client.exists(f"erlmcp:events:{stream.id}") == 1
            assert client.exists(f"erlmcp:events:{stream.id}:reader") == 1

            await found.append(b'{"n":3}')  # the adopter carries on
            expected = [(f"{stream.id}-{n}", f'{{"n":{n}}}'.encode()) for n in (1, 2, 3)]
            assert await first_events(found, 3) == expected  # all of it, and on
        finally:
            for store in (first, second):
                await store.close()

    try:
        run(scenario)
    finally:
        client.close()


def test_the_entry_that_names_an_adopter_never_reaches_a_reader_as_an_event(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        first, second = replica(redis_url, check_seconds=3600), replica(redis_url)
        try:
            _, stream, found = await adopted(client, first, second, max_events=2)
            await found.append(b'{"n":3}')
            # The stream keeps two entries: the one naming the adopter (the event it followed, of the same number, was
            # trimmed) and the adopter's first event.
            entries: Any = client.xrange(f"erlmcp:events:{stream.id}")
            assert [fields[b"seq"] for _, fields in entries] == [b"2", b"3"]

            assert await first_events(found, 1) == [(f"{stream.id}-3", b'{"n":3}')]
        finally:
            for store in (first, second):
                await store.close()

    try:
        run(scenario)
    finally:
        client.close()
