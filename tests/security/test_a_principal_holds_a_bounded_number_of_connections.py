"""Finding 23a: nothing bounded the long-lived connections one principal held.

With one ``limited`` key the review opened 300 of 300 ``GET /sse`` streams, and every one stayed open (opening
one costs no rate token); ``GET /mcp`` streams, standalone or resumed with ``Last-Event-ID``, were slowed only by
the rate limit, and WebSocket and TCP connections that had sent one message were not bounded at all. Each costs
the server memory and a task for as long as its client likes.

Now one cap, ``ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL`` (per replica), bounds the long-lived connections one principal
holds open at once, whatever their kind: legacy SSE streams, standalone and resumed ``GET /mcp`` streams,
WebSockets, and TCP connections once authenticated. One over the cap is refused with a reason: HTTP 429 with
``Retry-After`` and a JSON-RPC error for the HTTP streams, the upgrade refused with 429 (or a close 1008 with a
reason) for a WebSocket, a JSON-RPC error line and the end of the connection for TCP. Another principal is served
meanwhile; a connection that closes gives its slot back; and each refusal is counted in
``erlmcp_connections_refused_total{transport, reason="per_principal_cap"}``.

The server's cap is small (3), so that it is reached in a few connections.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from tests.doors import TIMEOUT, LinePeer, Peer, connect, run
from tests.security.conftest import ACCEPT, ChartServer, serve_as_chart
from tests.stateless import META

pytestmark = pytest.mark.slow

SCENARIO_SECONDS = 60.0  # a whole scenario (each answer is awaited TIMEOUT at most)
DEADLINE = 2  # seconds: the server's ERLMCP_HEADER_TIMEOUT_SECONDS (and first-message deadline)
CAP = 3  # the server's ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL
RATE_LIMITED = -32029  # the JSON-RPC code of a 429 on every transport (wire value, pinned here)
SSE_ACCEPT = {"Accept": "text/event-stream"}
RESUMABLE = CAP + 2  # http-resume: the streams a holder resumes in a test (the cap's, a refused one, one more)
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "holder", "version": "1"}}
# Each door, and the transport label its connections have in the server's metrics.
DOORS = {
    "sse": "sse",
    "websocket": "websocket",
    "tcp": "tcp",
    "http-get": "streamable-http",
    "http-resume": "streamable-http",
    "http-listen": "streamable-http",  # 2026-07-28 subscriptions/listen: a POST answered by a lasting stream
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    env = {"ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL": str(CAP), "ERLMCP_HEADER_TIMEOUT_SECONDS": str(DEADLINE)}
    catalog = tmp_path_factory.mktemp("connection-cap-catalog") / "catalog.yaml"  # a file: its lists may change,
    catalog.write_text("tools:\n  - {name: echo, description: Echo., builtin: echo}\n")  # so clients may listen
    running = serve_as_chart(tmp_path_factory, "connection-cap", env=env, args=("--catalog", str(catalog)))
    yield running
    running.stop()


@dataclass
class Refused(Exception):
    """The server refused to open a connection: how (an HTTP status, a WebSocket close, a TCP error line)."""

    door: str
    status: int | None = None  # an HTTP status (the upgrade's, for a WebSocket)
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None  # the JSON-RPC error it sent
    close_code: int | None = None  # a WebSocket closed after its upgrade
    close_reason: str = ""
    ended: bool = False  # TCP: the server closed the connection after its error line

    def __str__(self) -> str:
        return f"{self.door}: refused: status={self.status} error={self.error} close={self.close_code}"


class Held:
    """One open long-lived connection; ``close`` lets it go."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack

    async def close(self) -> None:
        await self._stack.aclose()


def _error_of(body: bytes) -> dict[str, Any] | None:
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    return error if isinstance(error, dict) else None


class Holder:
    """One principal opening connections through one door. Each ``open`` shows the connection served (an answer
    on it, or its stream's first event) or raises :class:`Refused` with what the server said."""

    def __init__(self, door: str, server: ChartServer, key_name: str) -> None:
        self.door, self.server, self.key = door, server, server.key(key_name)
        # http-resume: GET streams to resume, each of a session of its own (the session's headers, an event id)
        self._resumable: list[dict[str, str]] = []

    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def open(self) -> Held:
        stack = AsyncExitStack()
        try:
            if self.door in {"websocket", "tcp"}:
                await self._peer(stack)
            elif self.door == "sse":
                await self._sse(stack)
            elif self.door == "http-listen":
                await self._listen(stack)
            else:
                await self._get(stack)
        except BaseException:
            await stack.aclose()
            raise
        return Held(stack)

    async def _peer(self, stack: AsyncExitStack) -> None:
        try:
            peer: Peer = await stack.enter_async_context(connect(f"{self.door}-2026", self.server, self.key))
        except InvalidStatus as refused:  # the WebSocket upgrade was refused
            response = refused.response
            headers = {name.lower(): value for name, value in response.headers.raw_items()}
            raise Refused(self.door, response.status_code, headers, _error_of(bytes(response.body or b""))) from None
        try:
            answer = await peer.ask(peer.request(1, "tools/list"))
        except AssertionError as closed:  # the WebSocket was closed after its upgrade
            found = re.search(r"closed: (\d+) '(.*)'", str(closed))
            if found is None:
                raise
            raise Refused(self.door, close_code=int(found[1]), close_reason=found[2]) from None
        if "error" in answer:
            ended = await peer.ended() if isinstance(peer, LinePeer) else False
            raise Refused(self.door, error=answer["error"], ended=ended)
        assert "tools" in answer.get("result", {}), f"{self.door}: tools/list answered {answer}"

    async def _sse(self, stack: AsyncExitStack) -> None:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=self.server.url, headers=self._bearer(), timeout=TIMEOUT)
        )
        stream = await stack.enter_async_context(
            client.stream("GET", "/sse", headers=SSE_ACCEPT, timeout=httpx.Timeout(TIMEOUT, read=TIMEOUT))
        )
        await self._first_event(stream, stack)

    async def _listen(self, stack: AsyncExitStack) -> None:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=self.server.url, headers=self._bearer(), timeout=TIMEOUT)
        )
        params = {"notifications": {"toolsListChanged": True}, "_meta": META}
        listen = {"jsonrpc": "2.0", "id": 1, "method": "subscriptions/listen", "params": params}
        headers = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": "2026-07-28",
                   "Mcp-Method": "subscriptions/listen"}  # fmt: skip
        stream = await stack.enter_async_context(
            client.stream(
                "POST",
                "/mcp",
                content=orjson.dumps(listen),
                headers=headers,
                timeout=httpx.Timeout(TIMEOUT, read=TIMEOUT),
            )  # fmt: skip
        )
        first = await self._first_event(stream, stack)
        assert "notifications/subscriptions/acknowledged" in first, f"{self.door}: the stream began {first}"

    async def _first_event(self, stream: httpx.Response, stack: AsyncExitStack) -> str:
        """The first event of a stream that opened (its lines), or :class:`Refused` with the refusal. The stream
        stays open: its reader is kept (and closed) with the connection."""
        if stream.status_code != 200:
            body = await stream.aread()
            headers = {name.lower(): value for name, value in stream.headers.items()}
            raise Refused(self.door, stream.status_code, headers, _error_of(body))
        reader = stream.aiter_lines()  # dropped, it would close the stream when collected
        stack.push_async_callback(reader.aclose)  # type: ignore[attr-defined]
        with anyio.fail_after(TIMEOUT):
            lines: list[str] = []
            async for line in reader:
                if not line and lines:
                    return "\n".join(lines)
                if line and not line.startswith(":"):
                    lines.append(line)
        raise AssertionError(f"{self.door}: the stream ended before its first event")

    async def _session(self, client: httpx.AsyncClient) -> dict[str, str]:
        """A new session's headers: initialized over POST /mcp."""
        hello = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}
        headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        opened = await client.post("/mcp", content=orjson.dumps(hello), headers=headers)
        assert opened.status_code == 200, f"{self.door}: initialize answered {opened.status_code} {opened.text}"
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await client.post("/mcp", content=orjson.dumps(initialized), headers=headers | session)
        return session

    async def _get(self, stack: AsyncExitStack) -> None:
        """http-get: a new session's standalone GET stream. http-resume: a GET stream resumed from its priming event
        (``Last-Event-ID``), each of a session of its own: a resume takes over from the connection reading its
        stream (which ends), so two resumes of one stream are never held at once."""
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=self.server.url, headers=self._bearer(), timeout=TIMEOUT)
        )
        if self.door == "http-resume":
            if not self._resumable:  # made before this principal holds any connection
                self._resumable = [await self._left_stream(client) for _ in range(RESUMABLE)]
            headers = {**SSE_ACCEPT, **self._resumable.pop(0)}
        else:
            headers = {**SSE_ACCEPT, **await self._session(client)}
        stream = await stack.enter_async_context(
            client.stream("GET", "/mcp", headers=headers, timeout=httpx.Timeout(TIMEOUT, read=TIMEOUT))
        )
        if self.door == "http-resume":  # a resumed stream sends nothing until the session hears of something
            if stream.status_code != 200:
                await self._first_event(stream, stack)
            return
        await self._first_event(stream, stack)

    async def _left_stream(self, client: httpx.AsyncClient) -> dict[str, str]:
        """A new session's GET stream, opened and left after its priming event: the headers that resume it."""
        session = await self._session(client)
        with anyio.fail_after(TIMEOUT):
            while True:  # (the server sees the previous one's connection go in its own time)
                async with AsyncExitStack() as stack:
                    stream = await stack.enter_async_context(
                        client.stream("GET", "/mcp", headers={**SSE_ACCEPT, **session})
                    )
                    try:
                        priming = await self._first_event(stream, stack)
                    except Refused:
                        await asyncio.sleep(0.2)
                        continue
                return {**session, "Last-Event-ID": priming.partition("id: ")[2].splitlines()[0]}


async def _bounded(scenario: Callable[[], Awaitable[None]]) -> None:
    """The whole scenario within a generous bound: a hang fails the test instead of stalling the run."""
    with anyio.fail_after(SCENARIO_SECONDS):
        await scenario()


async def _served_again(holder: Holder) -> Held:
    """A connection opened once a slot is free: the server sees a closed connection go in its own time."""
    with anyio.fail_after(TIMEOUT):
        while True:
            try:
                return await holder.open()
            except Refused:
                await asyncio.sleep(0.2)


def _refused_for_the_cap(refused: Refused) -> None:
    """The refusal names the cap: 429 with Retry-After and a JSON-RPC error, a close 1008 with a reason, or a TCP
    error line followed by the end of the connection."""
    if refused.close_code is not None:
        assert refused.close_code == 1008, refused
        assert "connections" in refused.close_reason, refused
        return
    assert refused.error is not None, f"{refused}: no JSON-RPC error says why"
    assert refused.error["code"] == RATE_LIMITED, refused
    assert f"{CAP} " in refused.error["message"], refused
    assert "connections" in refused.error["message"], refused
    if refused.door == "tcp":
        assert refused.ended, f"{refused}: the TCP connection stayed open after its refusal"
    else:
        assert refused.status == 429, refused
        assert refused.headers.get("retry-after", "").isdigit(), refused


def _refusals_counted(server: ChartServer, transport: str, reason: str = "per_principal_cap") -> float:
    text = httpx.get(server.running.metrics_url, timeout=TIMEOUT).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        labels = (f'reason="{reason}"', f'transport="{transport}"')
        if name.startswith("erlmcp_connections_refused_total{") and all(label in name for label in labels):
            return float(value)
    return 0.0


async def _refusal(holder: Holder, served: str) -> Refused:
    """How the server refuses the holder's next connection; ``served``: what it means if it does not."""
    try:
        extra = await holder.open()
    except Refused as refused:
        return refused
    await extra.close()
    raise AssertionError(served)


@pytest.mark.parametrize("door", list(DOORS))
def test_a_principal_over_its_connection_cap_is_refused_while_others_are_served_and_a_closed_slot_is_reusable(
    server: ChartServer, door: str
) -> None:
    counted_before = _refusals_counted(server, DOORS[door])

    async def scenario() -> None:
        limited, other = Holder(door, server, "limited"), Holder(door, server, "other")
        held = [await limited.open() for _ in range(CAP)]
        try:
            served = f"{door}: connection {CAP + 1} of one principal was served (the cap is {CAP})"
            _refused_for_the_cap(await _refusal(limited, served))
            others = await other.open()  # another principal is served while this one is at its cap
            await others.close()
            await held.pop(0).close()
            held.append(await _served_again(limited))  # the slot of a closed connection is taken again
        finally:
            for connection in held:
                await connection.close()

    run(lambda: _bounded(scenario))
    assert _refusals_counted(server, DOORS[door]) > counted_before, (
        f'{door}: the refusal is not counted in erlmcp_connections_refused_total{{reason="per_principal_cap"}}'
    )


def test_one_cap_counts_every_kind_of_long_lived_connection(server: ChartServer) -> None:
    """An SSE stream, a WebSocket and a TCP connection are the principal's three: its GET stream is one too many."""

    async def scenario() -> None:
        held = [await Holder(door, server, "limited").open() for door in ("sse", "websocket", "tcp")]
        try:
            served = f"a GET stream was served to a principal holding {CAP} other connections"
            _refused_for_the_cap(await _refusal(Holder("http-get", server, "limited"), served))
        finally:
            for connection in held:
                await connection.close()

    run(lambda: _bounded(scenario))


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
def test_a_connection_cut_at_its_first_message_deadline_is_counted(server: ChartServer, transport: str) -> None:
    """The cuts the deadline makes are counted with the refusals: erlmcp_connections_refused_total{transport,
    reason="first_message_deadline"}."""
    counted_before = _refusals_counted(server, transport, "first_message_deadline")

    async def scenario() -> None:
        if transport == "tcp":
            stream = await anyio.connect_tcp("127.0.0.1", server.tcp_port)
            async with stream:
                with anyio.fail_after(TIMEOUT):
                    while True:  # the error line, then the end of the connection
                        try:
                            await stream.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            return
        url = f"ws://127.0.0.1:{server.port}/ws"
        bearer = {"Authorization": f"Bearer {server.key('limited')}"}
        async with websocket_connect(url, subprotocols=[Subprotocol("mcp")], additional_headers=bearer) as silent:
            with anyio.fail_after(TIMEOUT), pytest.raises(ConnectionClosed) as closed:
                await silent.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008, closed.value

    run(lambda: _bounded(scenario))
    assert _refusals_counted(server, transport, "first_message_deadline") > counted_before, (
        f"{transport}: the deadline cut is not counted in erlmcp_connections_refused_total (first_message_deadline)"
    )
