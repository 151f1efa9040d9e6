"""The server the client matrix connects to, and the matrix's runs.

One server for the module, configured as the chart ships it (tests/security/conftest.py: API keys on, JSON logs
at INFO, the chart's request rate), with the conformance catalogue and a short SSE keep-alive (0.2 s instead of
15 s), so that every long call and every GET stream carries keep-alives while a client reads it: old clients
have mistaken them for messages (docs/client-interop.md section 2). Each run presents a key of its own, so that
runs going on at once do not share a request budget. The GET-stream runs (list_changed) also go to a second
server with its sessions in a real Redis, as the chart ships with Redis configured (the seed's 3-10 replicas):
its event streams are Redis streams, written and read by other code than the memory store's.

The drivers run as subprocesses, several at once: when the first test asks for its run, the fixture starts every
run the selected tests need (and only those), and each test waits for its own.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.interop.clients import CASES, Case, Report, run_driver
from tests.interop.proxy import cutting_proxy
from tests.redis_server import RedisServer
from tests.security.conftest import ChartServer, serve_as_chart

KEEPALIVE_SECONDS = "0.2"
CATALOG = ["--catalog", "conformance"]
# Every step but list_changed, which runs alone behind a cutting proxy.
SESSION_STEPS = ("tools", "call", "resource", "prompt", "progress", "reconnection", "unauthorized")
STORES = ("memory", "redis")  # where the sessions of the server a GET-stream run connects to live
# Drivers mostly wait (on the network, on a timeout); more than this at once only queues for the two cores.
WORKERS = 6


def key_of(name: str) -> tuple[str, str]:
    return ("*", f"{name}-key-0123456789abcdef")


def _serve(factory: pytest.TempPathFactory, name: str, env: dict[str, str] | None = None) -> ChartServer:
    keys = {name: key_of(name) for case in CASES for name in (case.id, f"{case.id}.cut")}
    settings = {"ERLMCP_SSE_KEEPALIVE_SECONDS": KEEPALIVE_SECONDS, **(env or {})}
    return serve_as_chart(factory, name, args=CATALOG, env=settings, keys=keys)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    running = _serve(tmp_path_factory, "interop")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def redis_backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    """The same server with its sessions in a real Redis (ERLMCP_REDIS_URL)."""
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        running = _serve(tmp_path_factory, "interop-redis", {"ERLMCP_REDIS_URL": redis.url})
        yield running
        running.stop()
    finally:
        redis.stop()


class Matrix:
    """The driver runs of a module, started on a pool and awaited by case."""

    def __init__(self, servers: dict[str, ChartServer], pool: ThreadPoolExecutor) -> None:
        self._servers = servers
        self._server = servers["memory"]
        self._pool = pool
        # A change of the tool list is announced to every session of the server, and a list_changed run counts
        # every announcement it hears: one such run at a time, so that it hears its own three only.
        self._one_list_changer = threading.Lock()
        self._sessions: dict[str, Future[Report]] = {}
        self._cut_runs: dict[tuple[str, str], Future[tuple[Report, list[int]]]] = {}

    def start(self, sessions: list[Case], cut_runs: list[tuple[Case, str]]) -> None:
        """Start the runs (each once): sessions, and list_changed runs against the server of a store."""
        for case in sessions:
            if case.id not in self._sessions:
                self._sessions[case.id] = self._pool.submit(self._session, case)
        for case, store in cut_runs:
            if (case.id, store) not in self._cut_runs:
                self._cut_runs[case.id, store] = self._pool.submit(self._list_changed, case, store)

    def session(self, case: Case) -> Report:
        """The report of the case's session: every step but list_changed, straight to the server."""
        self.start([case], [])
        return self._sessions[case.id].result()

    def list_changed(self, case: Case, store: str) -> tuple[Report, list[int]]:
        """The report of the case's list_changed step, against the server whose sessions live in ``store``, behind
        a proxy that cuts its GET stream ``case.cuts`` times, and how many streams each cut ended."""
        self.start([], [(case, store)])
        return self._cut_runs[case.id, store].result()

    def _session(self, case: Case) -> Report:
        return run_driver(
            case,
            self._server.url,
            key_of(case.id)[1],
            steps=SESSION_STEPS,
            stdio_command=[sys.executable, "-m", "app", "--transport", "stdio", *CATALOG],
            stdio_env=self._server.env,
        )

    def _list_changed(self, case: Case, store: str) -> tuple[Report, list[int]]:
        with self._one_list_changer, cutting_proxy(self._servers[store].port, cuts=case.cuts) as proxy:
            key = key_of(f"{case.id}.cut")[1]
            report = run_driver(case, proxy.url, key, steps=["list_changed"], cut_url=proxy.cut_url)
            return report, list(proxy.cut_sizes)


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, server: ChartServer, redis_backed: ChartServer) -> Iterator[Matrix]:
    """The module's runs; on first use, every run its selected tests need is started."""
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="driver") as pool:
        runs = Matrix({"memory": server, "redis": redis_backed}, pool)
        # The selected tests of this module name their case as the parameter "case" (a session's steps) or
        # "cut_case" (list_changed behind the proxy, against the server of "store").
        params = [
            item.callspec.params
            for item in request.session.items
            if isinstance(item, pytest.Function) and item.module is request.module and hasattr(item, "callspec")
        ]
        sessions = [case for case in (p.get("case") for p in params) if isinstance(case, Case)]
        cut_runs = [
            (case, str(p["store"])) for p in params if isinstance(case := p.get("cut_case"), Case) and "store" in p
        ]
        runs.start(sessions, cut_runs)
        yield runs
