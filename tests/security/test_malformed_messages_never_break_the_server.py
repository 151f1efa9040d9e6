"""A property over every transport: no sequence of malformed messages makes the server answer 5xx (or an internal
error), log a traceback or an error, or stop answering ``/livez`` within 100 ms; and the door keeps serving.

Each example is a short sequence of malformed messages (tests/messages.py: mutated requests of every method,
mutated envelopes, JSON that is no message, bytes that are no JSON, deep nesting, batches), sent through one door
(tests/doors.py) of a real server configured as the chart ships it, while a prober asks ``/livez`` every 20 ms with
a 100 ms budget. Afterwards the same door (or, when the server rightly closed the connection, a new one) must
still answer a ``ping``. Rate limits are lifted: they are policy, and would refuse the examples before the parser
sees them. The stdio doors spawn a process per example, hence fewer examples there.

What this leaves out: it cannot see a slow leak (the soak tests do), and 100 ms is a liveness budget, not a
latency target: one or two probes in a row may miss it on a busy machine, three (a stall of about 0.4 s) may not.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
from anyio.abc import TaskStatus
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.doors import HANDSHAKE, NETWORK_DOORS, Peer, connect, run, session
from tests.messages import raw_messages
from tests.security.conftest import ChartServer, serve_as_chart

pytestmark = pytest.mark.slow

LIVENESS_BUDGET = 0.1  # seconds /livez may take
PROBE_EVERY = 0.02
MISSES_IN_A_ROW = 3  # a stalled loop misses every probe; a noisy 2-core machine may make one or two miss
LIMIT = 16 * 1024  # ERLMCP_MAX_REQUEST_BYTES: large enough for the examples, small enough to be reached
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    env = {
        "ERLMCP_RATE_LIMIT_PER_SECOND": "0",
        "ERLMCP_INITIALIZE_PER_MINUTE": "1000000",
        "ERLMCP_MAX_SESSIONS_PER_PRINCIPAL": "0",
        "ERLMCP_MAX_REQUEST_BYTES": str(LIMIT),
    }
    running = serve_as_chart(tmp_path_factory, "malformed", env=env)
    yield running
    running.stop()


class Prober:
    """Asks /livez every PROBE_EVERY seconds; remembers the longest run of probes that missed the budget."""

    def __init__(self, url: str) -> None:
        self._url = f"{url}/livez"
        self.misses: list[str] = []
        self.worst_run = 0

    async def probe(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        run_of_misses = 0
        async with httpx.AsyncClient(timeout=LIVENESS_BUDGET) as client:
            task_status.started()
            while True:
                started = anyio.current_time()
                try:
                    answered = await client.get(self._url)
                    missed = answered.status_code != 200 or anyio.current_time() - started > LIVENESS_BUDGET
                    why = f"{answered.status_code} after {anyio.current_time() - started:.3f} s"
                except httpx.HTTPError as exc:
                    missed, why = True, f"{type(exc).__name__} after {anyio.current_time() - started:.3f} s"
                run_of_misses = run_of_misses + 1 if missed else 0
                self.worst_run = max(self.worst_run, run_of_misses)
                if missed:
                    self.misses.append(why)
                await anyio.sleep(PROBE_EVERY)


def check_answer(door: str, answer: Any) -> None:
    """An answer to a malformed message: a JSON-RPC message (or a batch of them), never an internal error."""
    for message in answer if isinstance(answer, list) else [answer]:
        assert isinstance(message, dict), f"{door}: not a JSON-RPC message: {message!r}"
        error = message.get("error")
        if isinstance(error, dict):
            assert error.get("code") != -32603, f"{door}: an internal error for bad input: {message}"
            assert error.get("message"), f"{door}: an error without a message: {message}"


def _sentinel(peer: Peer) -> dict[str, Any]:
    """A well-formed request every door and era serves (``ping`` is gone in 2026-07-28): after the malformed
    messages, its answer marks the end of theirs."""
    return peer.request(f"alive-{next(_ids)}", "tools/list")


def _check_sentinel(door: str, sent: dict[str, Any], answer: Any) -> bool:
    if not (isinstance(answer, dict) and answer.get("id") == sent["id"]):
        return False
    if door.startswith("tcp") and str(answer.get("error", {}).get("message", "")).startswith("Unauthorized"):
        return True  # the malformed first message had no key, and a TCP connection is authenticated by its first
    assert isinstance(answer.get("result", {}).get("tools"), list), f"{door}: tools/list answered {answer}"
    return True


CLOSED = (ConnectionClosed, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


async def _malformed_then_sentinel(door: str, peer: Peer, messages: list[bytes]) -> bool:
    """Send the messages, then the sentinel, checking every answer on the way; False when the server closed the
    connection first (its right after, e.g., a TCP client that never authenticated)."""
    try:
        for data in messages:
            response = await peer.send(data)
            if isinstance(response, httpx.Response):
                assert response.status_code < 500, f"{door}: {response.status_code} {response.text[:300]}"
                if response.content and response.headers.get("content-type", "").startswith("application/json"):
                    check_answer(door, orjson.loads(response.content))
        sent = _sentinel(peer)
        await peer.send(sent)
        while True:
            try:
                answer = await peer.receive()
            except AssertionError as silent:
                if "ended" in str(silent) or "closed" in str(silent):
                    return False
                raise
            if _check_sentinel(door, sent, answer):
                return "error" not in answer  # refused: a new client must be served
            check_answer(door, answer)
    except CLOSED:
        return False


async def _a_new_client_is_served(door: str, server: ChartServer) -> None:
    async with session(door, server, server.key("admin")) as fresh:
        sent = _sentinel(fresh)
        assert _check_sentinel(door, sent, await fresh.ask(sent)), f"{door}: a new client was not answered"


def _log_is_clean(server: ChartServer, door: str) -> None:
    texts = [server.log_text(), *(log.read_text(errors="replace") for log in server.root.glob("stdio-*.log"))]
    for text in texts:
        assert "Traceback" not in text, f"{door}: a traceback in the log:\n{text[-3000:]}"
    for record in server.log_records():
        severity = str(record.get("severity", record.get("level", ""))).upper()
        assert severity not in {"ERROR", "CRITICAL"}, f"{door}: an error logged: {record}"


def check_door(server: ChartServer, door: str, messages: list[bytes]) -> None:
    prober = Prober(server.url)

    async def scenario() -> None:
        async with anyio.create_task_group() as probes:
            await probes.start(prober.probe)
            opener = session if door.endswith(HANDSHAKE) else connect
            async with opener(door, server, server.key("admin")) as peer:
                answered = await _malformed_then_sentinel(door, peer, messages)
            if not answered:
                await _a_new_client_is_served(door, server)
            probes.cancel_scope.cancel()

    run(scenario)
    if not door.startswith("stdio"):  # a stdio server is a process of its own: /livez is not its
        assert prober.worst_run < MISSES_IN_A_ROW, (
            f"{door}: /livez missed its {LIVENESS_BUDGET} s budget {prober.worst_run} times in a row: {prober.misses}"
        )
    _log_is_clean(server, door)


sequences = st.lists(raw_messages, min_size=1, max_size=4)


# An id holding U+0085 (NEL), which the server writes raw in its answer: a line end for str.splitlines() and httpx's
# aiter_lines, not for SSE (tests/sse.py); found by this property on the SSE doors, then kept as an example.
NEL_IN_THE_ID = [b'{"jsonrpc":"2.0","id":"a\\u0085b","method":"tools/list","params":{"cursor":7}}']
# An integer id past 64 bits as the first message on TCP (no key yet): the refusal named it, and orjson could not
# write it (an error in the log, no answer); found by this property on the TCP door, then kept as an example.
ID_PAST_64_BITS = [b'{"jsonrpc":"2.0","id":18446744073709551616,"method":"tools/list"}']


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=sequences)
@example(messages=NEL_IN_THE_ID)
@example(messages=ID_PAST_64_BITS)
@pytest.mark.parametrize("door", NETWORK_DOORS)
def test_no_sequence_of_malformed_messages_breaks_a_network_door(
    server: ChartServer, door: str, messages: list[bytes]
) -> None:
    check_door(server, door, messages)


@settings(max_examples=6, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=sequences)
@pytest.mark.parametrize("door", ["stdio-handshake", "stdio-2026"])
def test_no_sequence_of_malformed_messages_breaks_stdio(server: ChartServer, door: str, messages: list[bytes]) -> None:
    check_door(server, door, messages)
