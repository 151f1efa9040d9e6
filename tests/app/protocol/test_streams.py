"""A session's standalone stream (its GET stream) runs while it is read, and a short while after: nobody read it
for the session store's ``keep_finished_seconds`` and it stops, its listener forgotten (the changes published reach
no one for it), and it stays resumable for what it kept; a client that resumes it then reads on from a new stream of
the session. A reader on another replica counts as a reader; a resume there takes over from the reader here; of two
resumes at once the later reads; the session's end stops the stream. Both stores, the Redis one against a real
redis-server, with a short time to come back."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from app import __version__
from app.observability.metrics import Metrics
from app.protocol.core import ProtocolCore
from app.protocol.streams import carry_on_standalone, open_standalone
from app.sessions import EventStream, Session, SessionStore
from app.sessions.backend import session_backend
from app.sessions.events import Event
from app.sessions.redis import RedisSessionStore
from app.sessions.store import SessionBackend
from app.settings import Settings
from app.wiring import create_app
from tests.redis_server import RedisServer
from tests.scenarios import eventually, run

LIST_CHANGED = "notifications/tools/list_changed"
KEEP = {"memory": 0.3, "redis": 1.0}  # the stores' time to come back in these tests (Redis counts whole seconds)
TIMEOUT = 30  # the longest a scenario may take (the Redis ones wait out several times to come back)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def base() -> ProtocolCore:
    """A protocol core as the server builds it: its dispatcher, gate and metrics serve the cores of these tests."""
    core: ProtocolCore = create_app(Settings(no_auth=True), metrics=Metrics(__version__)).state.protocol_core
    return core


def new_store(backend: str, url: str | None) -> SessionBackend:
    keep = KEEP[backend]
    if url is None:
        return SessionStore(max_sessions=10, idle_seconds=60, keep_finished_seconds=keep)
    built = session_backend(Settings(redis_url=url))
    assert isinstance(built, RedisSessionStore)  # its client is configured as the server's
    return RedisSessionStore(built.redis, max_sessions=10, idle_seconds=60, keep_finished_seconds=keep)


def core_over(base: ProtocolCore, store: SessionBackend) -> ProtocolCore:
    return ProtocolCore(dispatcher=base.dispatcher, sessions=store, gate=base.gate, metrics=base.metrics)


async def new_session(store: SessionBackend) -> Session:
    return await store.create(protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="p")


async def read(events: AsyncIterator[Event], into: list[Event]) -> None:
    async for event in events:
        into.append(event)


def reading(events: AsyncIterator[Event]) -> tuple[asyncio.Task[None], list[Event]]:
    """A reader of ``events`` in a task of its own, and the list it puts them in as they come."""
    got: list[Event] = []
    return asyncio.create_task(read(events, got)), got


@dataclass
class Opened:
    """A session of a new store, and its standalone stream, open and attached (a connection reads it)."""

    store: SessionBackend
    core: ProtocolCore
    session: Session
    stream: EventStream
    keep: float  # the store's time to come back

    async def announce(self) -> int:
        """Announce a change of the tool list: to how many listeners it went."""
        return await self.core.announce(LIST_CHANGED, {})


Scenario = Callable[[Opened], Awaitable[None]]


def run_opened(base: ProtocolCore, backend: str, url: str | None, scenario: Scenario) -> None:
    """Run ``scenario`` on a session's standalone stream, opened in a new ``backend`` store (at ``url`` for Redis)
    as a GET opens it for a client that polls; the store is closed at the end, whatever the scenario asserted."""

    async def opened() -> None:
        store = new_store(backend, url)
        core = core_over(base, store)
        try:
            session = await new_session(store)
            stream = (await open_standalone(core, session, priming=True)).stream
            await stream.attach()
            await scenario(Opened(store, core, session, stream, KEEP[backend]))
        finally:
            await store.close()

    run(opened, TIMEOUT)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
def standalone(request: pytest.FixtureRequest, base: ProtocolCore) -> Callable[[Scenario], None]:
    """Runs a scenario on an open standalone stream (:func:`run_opened`), with each store."""
    backend: str = request.param
    url: str | None = request.getfixturevalue("redis_url") if backend == "redis" else None
    return functools.partial(run_opened, base, backend, url)


def test_a_standalone_stream_nobody_reads_stops_after_its_time_to_come_back_and_keeps_what_it_had(
    standalone: Callable[[Scenario], None],
) -> None:
    async def scenario(opened: Opened) -> None:
        stream = opened.stream
        assert await opened.announce() == 1
        stream.detach()  # the client's connection went

        # Detached, the stream goes on hearing of changes for the client to come back to ...
        assert await opened.announce() == 1
        assert not stream.closed
        # ... until nobody read it for its time to come back: then it stops, and its listener is forgotten.
        assert await eventually(lambda: stream.closed, timeout=5 * opened.keep)
        assert opened.session.standalone is None
        assert await opened.announce() == 0

        # What it kept stays resumable (a while): the changes after the priming event, and its end.
        kept = await opened.store.find_stream(opened.session, stream.id)
        assert kept is not None
        replayed = [event async for event in kept.follow(after=1)]
        assert [event.data.count(LIST_CHANGED.encode()) for event in replayed] == [1, 1]

    standalone(scenario)


def test_a_standalone_stream_being_read_goes_on_past_its_time_to_come_back(
    standalone: Callable[[Scenario], None],
) -> None:
    async def scenario(opened: Opened) -> None:
        stream = opened.stream
        reader, got = reading(stream.follow())
        await asyncio.sleep(3 * opened.keep)
        assert not stream.closed
        assert await opened.announce() == 1
        assert await eventually(lambda: len(got) == 2)  # the priming event, then the change
        reader.cancel()
        stream.detach()
        assert await eventually(lambda: stream.closed, timeout=5 * opened.keep)

    standalone(scenario)


def test_the_end_of_its_session_stops_a_standalone_stream(standalone: Callable[[Scenario], None]) -> None:
    async def scenario(opened: Opened) -> None:
        reader, _ = reading(opened.stream.follow())
        assert await opened.store.delete(opened.session.id)  # DELETE /mcp
        await asyncio.wait_for(reader, 5)  # the stream ended for its reader
        assert opened.stream.closed
        assert await opened.announce() == 0

    standalone(scenario)


def test_of_two_resumes_at_once_the_later_reads_the_stream_and_the_earlier_ends(
    standalone: Callable[[Scenario], None],
) -> None:
    async def scenario(opened: Opened) -> None:
        stream = opened.stream
        # The client resumed twice (it retried): both connections take the stream over before either reads it.
        earlier = await stream.attach()
        later = await stream.attach()
        earlier_reader, earlier_got = reading(stream.follow(after=1, generation=earlier))
        later_reader, later_got = reading(stream.follow(after=1, generation=later))

        assert await opened.announce() == 1
        assert await eventually(lambda: len(later_got) == 1)  # the change goes to the later connection ...
        assert earlier_got == []  # ... and not to the earlier one, which ended
        await asyncio.wait_for(earlier_reader, 5)
        later_reader.cancel()

    standalone(scenario)


def test_a_stream_taken_over_for_a_connection_about_to_read_it_does_not_stop_before_it_reads(
    standalone: Callable[[Scenario], None],
) -> None:
    async def scenario(opened: Opened) -> None:
        stream = opened.stream
        stream.detach()  # the client's connection went ...
        await asyncio.sleep(0.6 * opened.keep)
        generation = await stream.take_over()  # ... and it resumes: the server takes the stream over for it ...
        await asyncio.sleep(0.6 * opened.keep)  # ... but the response starts late: past the first time to come back
        assert not stream.closed
        await stream.attach(generation)
        reader, got = reading(stream.follow(after=1, generation=generation))
        assert await opened.announce() == 1
        assert await eventually(lambda: len(got) == 1)
        reader.cancel()
        stream.detach()

    standalone(scenario)


def test_a_client_that_resumes_a_stream_after_it_stopped_reads_on_from_a_new_stream_of_the_session(
    standalone: Callable[[Scenario], None],
) -> None:
    async def scenario(opened: Opened) -> None:
        stream = opened.stream
        assert await opened.announce() == 1  # the client saw this one ...
        stream.detach()  # ... and went, for longer than the stream is kept going
        assert await eventually(lambda: stream.closed, timeout=5 * opened.keep)

        # It resumes after the change it saw: the stopped stream kept nothing more, and a new stream carries on.
        kept = await opened.store.find_stream(opened.session, stream.id)
        assert kept is not None
        carried = await carry_on_standalone(opened.core, opened.session, kept)
        assert [event async for event in kept.follow(after=2)] == []
        assert carried is not None
        assert carried.id != stream.id
        assert opened.session.standalone is not None
        assert opened.session.standalone.stream is carried

        # The new stream hears of what comes next, and the resumed connection gets it.
        reader, got = reading(carried.follow(generation=await carried.attach()))
        assert await opened.announce() == 1
        assert await eventually(lambda: len(got) == 2)
        assert got[0].data == b""  # its priming event: an id for the client to resume from
        assert LIST_CHANGED.encode() in got[1].data
        reader.cancel()

    standalone(scenario)


def test_a_resume_of_a_stopped_stream_while_another_connection_reads_the_session_s_stream_only_replays(
    standalone: Callable[[Scenario], None],
) -> None:
    async def scenario(opened: Opened) -> None:
        stream = opened.stream
        stream.detach()
        assert await eventually(lambda: stream.closed, timeout=5 * opened.keep)
        current = (await open_standalone(opened.core, opened.session, priming=True)).stream
        await current.attach()  # a GET without Last-Event-ID opened the session's stream anew, and reads it

        kept = await opened.store.find_stream(opened.session, stream.id)
        assert kept is not None
        assert await carry_on_standalone(opened.core, opened.session, kept) is None
        assert opened.session.standalone is not None
        assert opened.session.standalone.stream is current  # left as it was
        current.detach()

    standalone(scenario)


@pytest.mark.slow
def test_a_reader_on_another_replica_keeps_the_stream_going_and_takes_over_from_the_reader_here(
    base: ProtocolCore, redis_url: str
) -> None:
    async def scenario(here: Opened) -> None:
        there = new_store("redis", redis_url)  # the other replica
        try:
            stream = here.stream
            stale_reader, stale = reading(stream.follow())
            assert await eventually(lambda: len(stale) == 1)  # the priming event

            copy = await there.get(here.session.id)  # the client resumes on the other replica
            assert copy is not None
            found = await there.find_stream(copy, stream.id)
            assert isinstance(found, EventStream)
            assert found.standalone
            await found.attach()
            reader, got = reading(found.follow(after=1))
            await asyncio.wait_for(stale_reader, 5)  # the reader here ended: the resume took over
            stream.detach()

            await asyncio.sleep(3 * here.keep)  # read there only, past the time to come back: it goes on
            assert not stream.closed
            assert await here.announce() == 1
            assert await eventually(lambda: len(got) == 1)

            reader.cancel()  # the reader there goes: the stream stops in time
            found.detach()
            assert await eventually(lambda: stream.closed, timeout=5 * here.keep)
            assert await here.announce() == 0
        finally:
            await there.close()

    run_opened(base, "redis", redis_url, scenario)


@pytest.mark.slow
def test_of_two_resumes_at_once_on_another_replica_the_later_reads_the_stream(
    base: ProtocolCore, redis_url: str
) -> None:
    async def scenario(here: Opened) -> None:
        there = new_store("redis", redis_url)  # the other replica, where the client resumes twice at once
        try:
            copy = await there.get(here.session.id)
            assert copy is not None
            first = await there.find_stream(copy, here.stream.id)  # (each request finds a copy of its own)
            second = await there.find_stream(copy, here.stream.id)
            assert first is not None
            assert second is not None
            earlier = await first.attach()
            later = await second.attach()
            earlier_reader, earlier_got = reading(first.follow(after=1, generation=earlier))
            later_reader, later_got = reading(second.follow(after=1, generation=later))

            assert await here.announce() == 1
            assert await eventually(lambda: len(later_got) == 1)
            assert earlier_got == []
            await asyncio.wait_for(earlier_reader, 5)
            later_reader.cancel()
        finally:
            await there.close()

    run_opened(base, "redis", redis_url, scenario)
