"""A 2025-03-26 JSON-RPC batch is bounded like the requests it holds (red-team finding 2).

The review sent batches to a server configured as the chart ships it: 100 POSTs of 200 ``echo`` calls were
answered at once (20,000 calls in 0.58 s, one rate token per POST), 3 POSTs made 2,964 upstream calls through an
http tool, and one 4 MB POST of 80,000 ``tools/list`` built a 246 MB answer (968 MiB resident, over the chart's
512 Mi limit). Now, whatever the rate limit:

- a batch of more than ERLMCP_MAX_BATCH_ITEMS messages (default 100) is refused whole, 413 with a JSON-RPC error
  naming the limit, before any of its items runs;
- each request in a batch takes a rate token, as it would alone;
- a batch runs at most ERLMCP_MAX_BATCH_CONCURRENCY items at once (default 8): seen from an upstream that counts
  the calls it serves at the same time;
- a batch's answer stops growing at ERLMCP_MAX_BATCH_RESPONSE_BYTES (default 4 MiB): the items past it are
  answered with an error saying so (-32030, most of them not run), and the server's memory stays far from what
  the whole answer would take;
- the other transports (WebSocket, TCP, legacy SSE, stdio) take no batches at all: refused, no item runs.

Two servers: one as the chart ships it (20 requests a second, burst 100) and one without a rate limit (the
server's own default, outside the chart), where nothing but the batch limits holds a batch back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.doors import connect, run
from tests.security.conftest import CHART_ENV, KEYS, ChartServer, open_session, serve_as_chart
from tests.security.memory import PeakRss

pytestmark = pytest.mark.slow

# The defaults of the batch limits (app/settings.py), pinned here as a client would read them in the README.
MAX_ITEMS = 100
CONCURRENCY = 8
BUDGET = 4 * 1024 * 1024
# The chart's rate (chart/values.yaml).
RATE, BURST = 20, 100
INVALID_REQUEST, RATE_LIMITED, BATCH_ANSWER_FULL = -32600, -32029, -32030

TIMEOUT = 60.0  # liveness bound of every request (the unbounded server took seconds on the review's batches)
BIG = 1024 * 1024  # the body of the upstream's /big: one answer is a quarter of the budget
SLOW = 0.25  # how long the upstream's /slow takes to answer

# A key per test, so that no test spends another's rate tokens; every key may use every tool.
TEST_KEYS = {name: ("*", f"{name}-key-0123456789abcdef") for name in ("flooder", "fanout", "hoarder", "capped")}


class Upstream:
    """The http tools' upstream: ``/slow`` answers after SLOW seconds and counts the calls it serves at the same
    time; ``/big`` answers BIG bytes of text."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.now = self.most = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with upstream.lock:
                    upstream.calls[self.path] = upstream.calls.get(self.path, 0) + 1
                    upstream.now += 1
                    upstream.most = max(upstream.most, upstream.now)
                try:
                    if self.path == "/slow":
                        time.sleep(SLOW)
                        body, media = b'{"ok": true}', "application/json"
                    else:
                        body, media = b"x" * BIG, "text/plain"
                    self.send_response(200)
                    self.send_header("Content-Type", media)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with upstream.lock:
                        upstream.now -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # every call of a batch connects at once, were they all let through
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.calls, self.most = {}, 0

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    served = Upstream()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def catalog(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tools (whose tools/list the review batched), and two http tools on the upstream."""
    builtins = ["echo", "add", "subtract", "multiply", "divide", "power", "sqrt", "system_info"]
    base = f"http://127.0.0.1:{upstream.port}"
    lines = [f"allowedHosts: ['127.0.0.1:{upstream.port}']", "tools:"]
    lines += [f"  - {{name: {name}, description: The built-in {name}., builtin: {name}}}" for name in builtins]
    lines += [f"  - {{kind: http, name: slow, description: Slow upstream., url: '{base}/slow'}}"]
    lines += [f"  - {{kind: http, name: big, description: Big upstream answer., url: '{base}/big'}}"]
    path = tmp_path_factory.mktemp("batch-catalog") / "catalog.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory, catalog: Path) -> Iterator[ChartServer]:
    """As the chart ships it: 20 requests a second, a burst of 100."""
    server = serve_as_chart(tmp_path_factory, "batches-chart", args=["--catalog", str(catalog)], keys=KEYS | TEST_KEYS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def unlimited(tmp_path_factory: pytest.TempPathFactory, catalog: Path) -> Iterator[ChartServer]:
    """The chart's settings without a rate limit (the server's default outside the chart)."""
    env = {"ERLMCP_RATE_LIMIT_PER_SECOND": "0"}
    args = ["--catalog", str(catalog)]
    server = serve_as_chart(tmp_path_factory, "batches-unlimited", args=args, env=env, keys=KEYS | TEST_KEYS)
    yield server
    server.stop()


def call(request_id: int, tool: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    params = {"name": tool, "arguments": dict(arguments or {})}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def post(server: ChartServer, session: Mapping[str, str], batch: Any) -> httpx.Response:
    data = batch if isinstance(batch, bytes) else orjson.dumps(batch)
    return httpx.post(server.mcp, content=data, headers=dict(session), timeout=TIMEOUT)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC error a refused POST answered with."""
    body = response.json()
    assert isinstance(body, dict), f"{response.status_code}: {response.text[:500]}"
    assert "error" in body, f"{response.status_code}: {response.text[:500]}"
    error: dict[str, Any] = body["error"]
    return error


def test_a_batch_over_the_item_limit_is_refused_whole_before_any_item_runs(
    unlimited: ChartServer, upstream: Upstream
) -> None:
    session = open_session(unlimited, "capped", version="2025-03-26", timeout=TIMEOUT)[1]
    upstream.reset()

    refused = post(unlimited, session, [call(i, "slow") for i in range(MAX_ITEMS + 1)])

    assert refused.status_code == 413, refused.text[:500]
    error = error_of(refused)
    assert error["code"] == INVALID_REQUEST
    assert f"a batch of {MAX_ITEMS + 1} messages is more than the {MAX_ITEMS}" in error["message"], error
    assert refused.json()["id"] is None
    assert upstream.calls.get("/slow", 0) == 0, "an item of the refused batch ran"


def test_a_batch_at_the_item_limit_is_answered_item_by_item(unlimited: ChartServer) -> None:
    session = open_session(unlimited, "capped", version="2025-03-26", timeout=TIMEOUT)[1]
    answered = post(unlimited, session, [call(i, "echo", {"text": f"item {i}"}) for i in range(MAX_ITEMS)])
    assert answered.status_code == 200, answered.text[:500]
    texts = [answer["result"]["content"][0]["text"] for answer in answered.json()]
    assert texts == [f"item {i}" for i in range(MAX_ITEMS)]


def test_the_reviews_batch_of_80000_tools_list_is_refused_and_the_servers_memory_stays_bounded(
    unlimited: ChartServer,
) -> None:
    session = open_session(unlimited, "capped", version="2025-03-26", timeout=TIMEOUT)[1]
    batch = b"[" + b",".join(b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}' % i for i in range(80_000)) + b"]"
    assert len(batch) < 4 * 1024 * 1024  # under the body limit: the review's body got through it

    with PeakRss(unlimited.running.process.pid) as memory:
        refused = post(unlimited, session, batch)

    assert refused.status_code == 413, f"{refused.status_code}, {len(refused.content)} bytes"
    assert "80000 messages" in error_of(refused)["message"]
    assert memory.growth < 150, f"the server's RSS grew by {memory.growth:.0f} MiB (from {memory.baseline:.0f})"
    ping = post(unlimited, session, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert ping.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_each_request_in_a_batch_takes_a_rate_token(chart: ChartServer) -> None:
    """The review's flood, at the batch limit: 20 POSTs of 50 echo calls as fast as they go. No more calls are
    answered than the client's burst plus what its rate refilled meanwhile; the rest are refused, 429."""
    started = time.monotonic()
    session = open_session(chart, "flooder", version="2025-03-26", timeout=TIMEOUT)[1]
    answered, limited = 0, []
    for post_number in range(20):
        batch = [call(post_number * 100 + i, "echo", {"text": "hi"}) for i in range(50)]
        response = post(chart, session, batch)
        if response.status_code == 200:
            answered += sum(1 for answer in response.json() if "result" in answer)
        else:
            limited.append(response)
    elapsed = time.monotonic() - started

    assert answered <= BURST + RATE * elapsed, f"{answered} calls answered in {elapsed:.2f} s"
    assert limited, "no batch was refused"
    assert all(response.status_code == 429 for response in limited), [r.status_code for r in limited]
    assert error_of(limited[0])["code"] == RATE_LIMITED
    assert "retry" in error_of(limited[0])["message"], error_of(limited[0])


def test_a_batch_runs_a_bounded_number_of_its_items_at_once(chart: ChartServer, upstream: Upstream) -> None:
    session = open_session(chart, "fanout", version="2025-03-26", timeout=TIMEOUT)[1]
    upstream.reset()

    answered = post(chart, session, [call(i, "slow") for i in range(40)])

    assert answered.status_code == 200, answered.text[:500]
    answers = answered.json()
    assert [answer["id"] for answer in answers] == list(range(40))
    assert all(answer["result"]["isError"] is False for answer in answers), answers
    assert upstream.calls["/slow"] == 40
    assert upstream.most <= CONCURRENCY, f"the upstream served {upstream.most} calls of one batch at once"


def test_a_batchs_answer_stops_growing_at_its_byte_budget(unlimited: ChartServer, upstream: Upstream) -> None:
    """100 calls that each answer 1 MiB: the answer would be 100 MiB. The first items are answered until the
    budget is reached; the others get an error saying why, most of them without running."""
    session = open_session(unlimited, "hoarder", version="2025-03-26", timeout=TIMEOUT)[1]
    upstream.reset()

    with PeakRss(unlimited.running.process.pid) as memory:
        answered = post(unlimited, session, [call(i, "big") for i in range(100)])

    assert answered.status_code == 200, answered.text[:500]
    assert len(answered.content) <= BUDGET + 100 * 1024, f"the answer is {len(answered.content)} bytes"
    answers = answered.json()
    assert sorted(answer["id"] for answer in answers) == list(range(100)), "an item was left unanswered"
    results = [answer for answer in answers if "result" in answer]
    errors = [answer["error"] for answer in answers if "error" in answer]
    assert results, "no item was answered"
    assert all(len(answer["result"]["content"][0]["text"]) == BIG for answer in results)
    assert errors, "no item was cut"
    assert all(error["code"] == BATCH_ANSWER_FULL and f"{BUDGET} bytes" in error["message"] for error in errors), (
        errors[:3]
    )
    assert upstream.calls["/big"] < 100, "every item ran, though the budget was spent"
    assert memory.growth < 150, f"the server's RSS grew by {memory.growth:.0f} MiB (from {memory.baseline:.0f})"


@dataclass(frozen=True)
class Doors:
    """A server as tests/doors.py reaches it (stdio: a process of its own with the same catalogue)."""

    server: ChartServer
    catalog: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.running.port

    @property
    def tcp_port(self) -> int:
        return self.server.tcp_port

    @property
    def root(self) -> Path:
        return self.server.root

    @property
    def env(self) -> Mapping[str, str]:
        return CHART_ENV | {"ERLMCP_CATALOG": str(self.catalog)}


@pytest.mark.parametrize("door", ["websocket-handshake", "tcp-handshake", "sse-handshake", "stdio-handshake"])
def test_the_other_transports_refuse_a_batch_and_run_none_of_its_items(
    chart: ChartServer, catalog: Path, upstream: Upstream, door: str
) -> None:
    """A batch on a stream transport is one refusal (-32600), whatever revision the session speaks: only streamable
    HTTP takes batches, through the core's bounded ProtocolCore.batch."""
    upstream.reset()
    key = None if door.startswith("stdio") else chart.key("admin")

    async def scenario() -> tuple[Any, Any]:
        async with connect(door, Doors(chart, catalog), key) as peer:
            opened = await peer.ask(peer.initialize_request(0, "2025-03-26"))
            answer = await peer.ask([call(1, "slow"), call(2, "slow")])
            return opened, answer

    opened, answer = run(scenario)

    assert opened["result"]["protocolVersion"] == "2025-03-26", opened
    assert answer["error"]["code"] == INVALID_REQUEST, answer
    assert "batch" in answer["error"]["message"], answer
    assert upstream.calls.get("/slow", 0) == 0
