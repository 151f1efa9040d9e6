"""The Redis session store when Redis goes away: what needs it fails fast and says so, readiness knows, what a
running request writes waits for Redis, and everything (the bus too) works again once Redis is back. Built as the
server builds it (``session_backend``), so the client's timeouts are the server's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from app.sessions import Session
from app.sessions import redis as redis_sessions
from app.sessions.backend import session_backend
from app.sessions.redis import RedisSessionStore
from app.sessions.store import SessionStoreUnavailable
from app.settings import Settings
from tests.conftest import free_port
from tests.redis_server import RedisServer

TIMEOUT = 0.5  # ERLMCP_REDIS_TIMEOUT_SECONDS of these stores
UNAVAILABLE = "the session store is unavailable"


def store_at(url: str, check_seconds: float = redis_sessions.CHECK_SECONDS) -> RedisSessionStore:
    built = session_backend(Settings(redis_url=url, redis_timeout_seconds=TIMEOUT))
    assert isinstance(built, RedisSessionStore)  # its client is configured as the server's
    return RedisSessionStore(built.redis, max_sessions=10, idle_seconds=60, check_seconds=check_seconds)


async def new_session(store: RedisSessionStore) -> Session:
    return await store.create(protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="p")


def loose(session_id: str) -> Session:
    return Session(
        id=session_id,
        protocol_version="2025-11-25",
        client_info={},
        client_capabilities={},
        principal="p",
        last_seen=0.0,
    )


async def eventually(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.05)
    return False


def test_while_redis_refuses_connections_requests_fail_at_once_and_writes_wait() -> None:
    async def scenario() -> None:
        store = store_at(f"redis://127.0.0.1:{free_port()}/0")
        try:
            assert UNAVAILABLE in (await store.unavailable() or "")
            started = time.monotonic()
            attempts = (
                lambda: store.get("x"),
                lambda: new_session(store),
                lambda: store.delete("x"),
                lambda: store.find_stream(loose("x"), "ab"),
            )
            for attempt in attempts:
                with pytest.raises(SessionStoreUnavailable, match=UNAVAILABLE):
                    await attempt()
            assert time.monotonic() - started < TIMEOUT  # known down: no attempt waits on Redis
            session = loose("x")
            await store.save(session)  # a request that was running finishes; its record waits for Redis
            stream = store.new_stream(session)
            await stream.append(b"one")
            await stream.close()
            assert stream.unwritten == 2  # type: ignore[attr-defined]
        finally:
            await store.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_redis_that_accepts_connections_and_never_answers_costs_the_timeout_not_minutes() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # a hung Redis: reads everything, answers nothing
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        store = store_at(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0")
        try:
            started = time.monotonic()
            assert UNAVAILABLE in (await store.unavailable() or "")
            with pytest.raises(SessionStoreUnavailable):
                await store.get("x")
            assert time.monotonic() - started < 3 * TIMEOUT + 1
        finally:
            await store.close()
            server.close()
            await server.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 10))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persistent=True).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_after_redis_restarts_what_waited_is_written_and_the_bus_delivers_again(redis_server: RedisServer) -> None:
    async def scenario() -> list[MutableMapping[str, Any]]:
        here, there = store_at(redis_server.url), store_at(redis_server.url)  # two replicas
        with capture_logs() as logs:
            try:
                assert await here.unavailable() is None
                assert await there.unavailable() is None
                session = await new_session(here)
                copy = await there.get(session.id)
                assert copy is not None

                async def answered_across(request_id: str) -> bool:
                    waiting = asyncio.get_running_loop().create_future()
                    session.pending[request_id] = waiting
                    await there.deliver_response(copy, request_id, {"result": request_id})  # over the bus
                    answer: dict[str, Any] = await asyncio.wait_for(waiting, 2)
                    return answer == {"result": request_id}

                assert await answered_across("srv-1")

                redis_server.kill()
                assert await eventually(lambda: _is_down(here, there), timeout=5)
                with pytest.raises(SessionStoreUnavailable):
                    await here.get(session.id)
                session.log_level = "error"
                await here.save(session)  # waits for Redis
                stream = here.new_stream(session)
                for data in (b"", b"one", b"two"):
                    await stream.append(data)
                await stream.close()

                redis_server.start()
                assert await eventually(lambda: _is_up(here, there), timeout=10)
                again = await there.get(session.id)
                assert again is not None
                assert again.log_level == "error"  # the record written once Redis answered
                resumed = await there.find_stream(again, stream.id)
                assert resumed is not None
                replay = [(event.id, event.data) async for event in resumed.follow(after=1)]
                assert replay == [(f"{stream.id}-2", b"one"), (f"{stream.id}-3", b"two")]
                assert await answered_across("srv-2")  # the bus subscribed again
            finally:
                await here.close()
                await there.close()
        return logs

    logs = asyncio.run(asyncio.wait_for(scenario(), 30))
    about_redis = [(entry["log_level"], entry["event"]) for entry in logs if entry["log_level"] != "debug"]
    down = ("warning", "Redis does not answer: requests that need the session store get 503 until it does")
    assert sorted(about_redis) == sorted([down, down, ("info", "Redis answers again"), ("info", "Redis answers again")])


async def _is_down(*stores: RedisSessionStore) -> bool:
    """Whether each store's own check found Redis away (readiness also fails while only the bus is away)."""
    return all([await store.unavailable() is not None and store.known_down for store in stores])


async def _is_up(*stores: RedisSessionStore) -> bool:
    return all([await store.unavailable() is None for store in stores])


@pytest.mark.slow
def test_a_reader_ends_once_the_replica_writing_its_stream_is_gone(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_sessions, "_LIVENESS_MS", 600)
    monkeypatch.setattr(redis_sessions, "_WRITER_GONE_SECONDS", 0.5)

    async def scenario() -> None:
        writer, reader = store_at(redis_server.url, check_seconds=0.2), store_at(redis_server.url, check_seconds=0.2)
        try:
            session = await new_session(writer)
            stream = writer.new_stream(session)
            await stream.append(b"")
            await stream.append(b"one")
            copy = await reader.get(session.id)
            assert copy is not None
            found = await reader.find_stream(copy, stream.id)
            assert found is not None
            received: list[bytes] = []

            async def read() -> None:
                async for event in found.follow():
                    received.append(event.data)

            following = asyncio.create_task(read())
            await asyncio.sleep(1.5)  # longer than the liveness key lasts: the writer refreshes it, the reader waits
            assert not following.done()
            await stream.append(b"two")
            assert await eventually(lambda: _true(received == [b"", b"one", b"two"]), timeout=2)
            assert writer._watcher is not None
            writer._watcher.cancel()  # the writer stops refreshing its liveness key, as a killed replica would
            await asyncio.wait_for(following, 5)  # ... and the reader ends instead of waiting forever
            assert received == [b"", b"one", b"two"]
        finally:
            await writer.close()
            await reader.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))


async def _true(value: bool) -> bool:
    return value
