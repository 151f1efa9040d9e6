"""The doors of a running server, and one small client per door (a :class:`Peer`), for tests that must hold
through every transport and protocol era: the transport parity matrix and the security properties.

A door is a transport and the protocol era it speaks:

- ``http-handshake``: streamable HTTP at /mcp, initialize first, then Mcp-Session-Id on every request;
- ``http-2026``: streamable HTTP, 2026-07-28 (stateless: each request carries its ``_meta`` and mirrored headers);
- ``sse-*``: the legacy HTTP+SSE transport (GET /sse, POST /messages, answers on the stream);
- ``websocket-*``: /ws, subprotocol ``mcp``, one message per text frame;
- ``tcp-*``: newline-delimited JSON on --tcp-port; the key in the first message's ``params._meta``;
- ``stdio-*``: ``python -m app --transport stdio`` (no authentication);

where ``-handshake`` initializes a session (on a stream transport the session is the connection) and ``-2026``
sends every request with its own ``_meta``. Every peer has the same few verbs (``send``, ``receive``, ``ask``,
``end``), so that a test reads the same on every transport.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import httpx
import orjson
from anyio.abc import ByteReceiveStream, ByteSendStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.conftest import ROOT
from tests.sse import aiter_lines, response_message
from tests.stateless import META

T = TypeVar("T")

TIMEOUT = 10.0  # the longest any one answer is waited for: a hang fails the test instead of stalling the run

# Wire names: what clients put on the wire, pinned here rather than imported from the server's modules.
API_KEY_META = "io.erlmcp/apiKey"  # TCP has no headers: the key rides in the first message's params._meta
CAPABILITIES_META = "io.modelcontextprotocol/clientCapabilities"
# The client capabilities of a 2026-07-28 request declaring the tasks extension.
TASKS: dict[str, Any] = {"extensions": {"io.modelcontextprotocol/tasks": {}}}
ACCEPT = "application/json, text/event-stream"
SSE_ACCEPT = {"Accept": "text/event-stream"}
# The body field each 2026-07-28 method mirrors into the Mcp-Name header.
NAMED_BY = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
NAMED_BY |= {method: "taskId" for method in ("tasks/get", "tasks/update", "tasks/cancel")}

HANDSHAKE, STATELESS = "handshake", "2026"
NETWORK_DOORS = [
    f"{transport}-{era}" for transport in ("http", "sse", "websocket", "tcp") for era in (HANDSHAKE, STATELESS)
]
HANDSHAKE_DOORS = [door for door in NETWORK_DOORS if door.endswith(HANDSHAKE)]
STATELESS_DOORS = [door for door in NETWORK_DOORS if door.endswith(STATELESS)]
# Framing does not depend on the era: the stream transports speak 2026-07-28 there (no handshake to get through).
FRAMING_DOORS = ["http-handshake", "http-2026", "sse-2026", "websocket-2026", "tcp-2026", "stdio-2026"]


def transport_of(door: str) -> str:
    return door.rsplit("-", 1)[0]


def era_of(door: str) -> str:
    return door.rsplit("-", 1)[1]


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    """Run a scenario; a failure inside a task group (the SSE peer reads its stream in one) is raised as itself."""
    try:
        return anyio.run(scenario)
    except BaseExceptionGroup as group:
        failure: BaseException = group
        while isinstance(failure, BaseExceptionGroup) and len(failure.exceptions) == 1:
            failure = failure.exceptions[0]
        raise failure from None


def _encode(message: Any) -> bytes:
    return message if isinstance(message, bytes) else orjson.dumps(message)


class Reachable(Protocol):
    """A running server as the peers reach it: its HTTP base URL and port, its TCP port, a directory for stdio
    logs, and the ERLMCP_* settings a stdio process of the same configuration gets."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def tcp_port(self) -> int: ...

    @property
    def root(self) -> Path: ...

    @property
    def env(self) -> Mapping[str, str]: ...


class Peer:
    """One client of one door. ``send`` writes a message (a dict, a list for a batch, or raw bytes) and, over
    HTTP, returns the HTTP response of its POST; ``receive`` is the next message the server sent this client;
    ``end`` ends the session (DELETE over HTTP, closing the connection elsewhere)."""

    def __init__(self, door: str, key: str | None) -> None:
        self.door, self.key = door, key
        self.transport, self.era = transport_of(door), era_of(door)
        self.opening: Any = None  # the answer to the initialize that opened the session, when there is one

    def request(
        self, request_id: Any, method: str, params: Mapping[str, Any] | None = None, *, capabilities: Any = None
    ) -> dict[str, Any]:
        """A request in this door's era: with the 2026-07-28 ``_meta`` (declaring ``capabilities``, when given),
        or plain for a session that initialized (whose capabilities were declared once, at initialize)."""
        body = dict(params or {})
        if self.era == STATELESS:
            body["_meta"] = {**META, **({CAPABILITIES_META: capabilities} if capabilities is not None else {})}
        return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body}

    @staticmethod
    def initialize_request(request_id: Any, version: str = "2025-11-25") -> dict[str, Any]:
        hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        return {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": hello}

    async def send(self, message: Any, *, chunked: bool = False) -> httpx.Response | None:
        """Send one message; ``chunked``: over HTTP, without Content-Length (the server reads its start)."""
        raise NotImplementedError

    async def _next(self) -> Any:
        raise NotImplementedError

    def _silence(self) -> str:
        """What to add when nothing came: clues from this transport."""
        return ""

    async def receive(self) -> Any:
        try:
            with anyio.fail_after(TIMEOUT):
                return await self._next()
        except TimeoutError:
            raise AssertionError(f"{self.door}: nothing received within {TIMEOUT:g} s{self._silence()}") from None

    async def ask(self, message: Any, *, chunked: bool = False) -> Any:
        await self.send(message, chunked=chunked)
        return await self.receive()

    async def send_all(self, *messages: Any, chunked: bool = False) -> list[httpx.Response | None]:
        """Send several messages before reading any answer (on a byte stream: in one write)."""
        return [await self.send(message, chunked=chunked) for message in messages]

    async def end(self) -> None:
        raise NotImplementedError


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1024):
        yield data[start : start + 1024]


class HttpPeer(Peer):
    """Streamable HTTP: each message is one POST, whose body (JSON, or the response event of a stream) is the
    answer ``receive`` returns. In the handshake era the initialize answer gives the session and the version."""

    def __init__(self, door: str, key: str | None, client: httpx.AsyncClient) -> None:
        super().__init__(door, key)
        self._client = client
        self._answers: deque[Any] = deque()
        self.session_id: str | None = None
        self.version: str | None = "2026-07-28" if self.era == STATELESS else None

    def _headers(self, message: Any) -> dict[str, str]:
        headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
        if self.version is not None:
            headers["MCP-Protocol-Version"] = self.version
        if self.session_id is not None:
            headers["Mcp-Session-Id"] = self.session_id
        method = message.get("method") if isinstance(message, dict) else None
        if self.era == STATELESS and isinstance(method, str):
            headers["Mcp-Method"] = method
            named = message.get("params", {}).get(NAMED_BY.get(method, ""))
            if isinstance(named, str):
                headers["Mcp-Name"] = named
        return headers

    async def send(self, message: Any, *, chunked: bool = False) -> httpx.Response:
        data = _encode(message)
        content = _pieces(data) if chunked else data
        response = await self._client.post("/mcp", content=content, headers=self._headers(message))
        if response.content:
            answer = response_message(response.headers.get("content-type", ""), response.text)
            self._answers.append(answer)
            opened = isinstance(message, dict) and message.get("method") == "initialize" and "result" in answer
            if opened and self.era == HANDSHAKE:
                self.session_id = response.headers.get("mcp-session-id")
                self.version = answer["result"]["protocolVersion"]
        return response

    async def _next(self) -> Any:
        if not self._answers:
            raise AssertionError(f"{self.door}: the POST was answered without a body")
        return self._answers.popleft()

    async def end(self) -> None:
        if self.session_id is not None:
            ended = await self._client.delete("/mcp", headers=self._headers(None))
            assert ended.status_code == 200, f"{self.door}: DELETE /mcp answered {ended.status_code} {ended.text}"
            self.session_id = None

    async def close(self) -> None:
        if self.session_id is not None:  # closing a client ends its session, as closing a connection does
            await self._client.delete("/mcp", headers=self._headers(None))


class SsePeer(Peer):
    """The legacy HTTP+SSE transport: each message is a POST to the URL the stream announced; the answers come on
    the stream. A POST answered with anything but 202 is kept in ``refusals``."""

    def __init__(self, door: str, key: str | None, client: httpx.AsyncClient, stream: httpx.Response) -> None:
        super().__init__(door, key)
        self._client, self._stream = client, stream
        self._sink, self._incoming = anyio.create_memory_object_stream[Any](100)
        self._announced = anyio.Event()
        self._finished = anyio.Event()
        self._scope = anyio.CancelScope()
        self.endpoint = ""
        self.refusals: list[httpx.Response] = []

    async def pump(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read the stream's events until it ends (or the peer ends it)."""
        task_status.started()
        event, data = "message", []
        try:
            with self._scope:
                async with self._sink:
                    async for line in aiter_lines(self._stream.aiter_text()):  # (SSE's line ends only)
                        if line:
                            field, _, value = line.partition(":")
                            value = value.removeprefix(" ")
                            event = value if field == "event" else event
                            data += [value] if field == "data" else []
                            continue
                        if data and event == "endpoint":
                            self.endpoint = "".join(data)
                            self._announced.set()
                        elif data:
                            await self._sink.send(orjson.loads("\n".join(data)))
                        event, data = "message", []
        except httpx.HTTPError:
            pass  # the stream broke off: receive() says it ended
        finally:
            self._finished.set()

    async def announced(self) -> None:
        with anyio.fail_after(TIMEOUT):
            await self._announced.wait()

    async def send(self, message: Any, *, chunked: bool = False) -> httpx.Response:
        data = _encode(message)
        content = _pieces(data) if chunked else data
        response = await self._client.post(self.endpoint, content=content, headers={"Content-Type": "application/json"})
        if response.status_code != 202:
            self.refusals.append(response)
        return response

    async def _next(self) -> Any:
        try:
            return await self._incoming.receive()
        except anyio.EndOfStream:
            raise AssertionError(f"{self.door}: the SSE stream ended{self._silence()}") from None

    def _silence(self) -> str:
        posts = "; ".join(f"{r.status_code} {r.text}" for r in self.refusals)
        return f" (POST /messages answered: {posts})" if posts else ""

    async def end(self) -> None:
        self._scope.cancel()
        await self._finished.wait()
        await self._stream.aclose()

    def close(self) -> None:
        self._incoming.close()


class WebSocketPeer(Peer):
    """/ws: one message per text frame (``send_binary`` sends a binary one)."""

    def __init__(self, door: str, key: str | None, websocket: ClientConnection) -> None:
        super().__init__(door, key)
        self._websocket = websocket

    async def send(self, message: Any, *, chunked: bool = False) -> None:
        """A text frame; bytes that are not UTF-8 cannot be one, and go as a binary frame."""
        data = _encode(message)
        try:
            await self._websocket.send(data.decode())
        except UnicodeDecodeError:
            await self._websocket.send(data)

    async def send_binary(self, data: bytes) -> None:
        await self._websocket.send(data)

    async def _next(self) -> Any:
        try:
            frame = await self._websocket.recv()
        except ConnectionClosed as closed:
            why = f"{closed.rcvd.code} {closed.rcvd.reason!r}" if closed.rcvd else "without a close frame"
            raise AssertionError(f"{self.door}: the WebSocket was closed: {why}") from None
        return orjson.loads(frame)

    async def end(self) -> None:
        await self._websocket.close()


class LinePeer(Peer):
    """Newline-delimited JSON over a byte stream (TCP, stdio). With a key, the first message carries it in its
    ``params._meta`` (TCP has no headers)."""

    def __init__(
        self, door: str, key: str | None, outgoing: ByteSendStream, incoming: ByteReceiveStream, log: Path | None
    ) -> None:
        super().__init__(door, key)
        self._outgoing = outgoing
        self._lines = BufferedByteReceiveStream(incoming)
        self._presented = key is None
        self._log = log

    def _line(self, message: Any) -> bytes:
        if not self._presented and isinstance(message, dict):
            params = dict(message.get("params") or {})
            params["_meta"] = {**params.get("_meta", {}), API_KEY_META: self.key}
            message = {**message, "params": params}
        self._presented = True
        return _encode(message) + b"\n"

    async def send(self, message: Any, *, chunked: bool = False) -> None:
        await self._outgoing.send(self._line(message))

    async def send_all(self, *messages: Any, chunked: bool = False) -> list[httpx.Response | None]:
        await self._outgoing.send(b"".join(self._line(message) for message in messages))
        return [None for _ in messages]

    async def _next(self) -> Any:
        try:
            line = await self._lines.receive_until(b"\n", 1 << 24)
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.ClosedResourceError):
            tail = self._log.read_text()[-2000:] if self._log is not None and self._log.exists() else ""
            raise AssertionError(f"{self.door}: the stream ended{': ' + tail if tail else ''}") from None
        return orjson.loads(line)

    async def end(self) -> None:
        await self._outgoing.aclose()

    async def ended(self) -> bool:
        """Whether the server closes the stream (within TIMEOUT) rather than sending more."""
        try:
            with anyio.fail_after(TIMEOUT):
                await self._lines.receive_until(b"\n", 1 << 24)
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.ClosedResourceError):
            return True
        except TimeoutError:
            return False
        return False


_STDIO_LOGS = itertools.count(1)


@asynccontextmanager
async def connect(door: str, server: Reachable, key: str | None = None) -> AsyncIterator[Peer]:
    """A peer connected through ``door`` with ``key`` (not yet initialized); closed at the end."""
    transport = transport_of(door)
    bearer = {"Authorization": f"Bearer {key}"} if key else {}
    if transport == "http":
        async with httpx.AsyncClient(base_url=server.url, headers=bearer, timeout=TIMEOUT) as client:
            peer = HttpPeer(door, key, client)
            try:
                yield peer
            finally:
                await peer.close()
    elif transport == "sse":
        async with (
            httpx.AsyncClient(base_url=server.url, headers=bearer, timeout=TIMEOUT) as client,
            client.stream("GET", "/sse", headers=SSE_ACCEPT, timeout=httpx.Timeout(TIMEOUT, read=None)) as stream,
        ):
            if stream.status_code != 200:
                await stream.aread()
                raise AssertionError(f"{door}: GET /sse answered {stream.status_code} {stream.text}")
            sse = SsePeer(door, key, client, stream)
            async with anyio.create_task_group() as group:
                await group.start(sse.pump)
                await sse.announced()
                try:
                    yield sse
                finally:
                    group.cancel_scope.cancel()
                    sse.close()
    elif transport == "websocket":
        url = f"ws://127.0.0.1:{server.port}/ws"
        options: dict[str, Any] = {"additional_headers": bearer, "max_size": None, "open_timeout": TIMEOUT}
        async with websocket_connect(url, subprotocols=[Subprotocol("mcp")], **options) as websocket:
            yield WebSocketPeer(door, key, websocket)
    elif transport == "tcp":
        async with await anyio.connect_tcp("127.0.0.1", server.tcp_port) as stream:
            yield LinePeer(door, key, stream, stream, None)
    else:
        assert transport == "stdio", door
        log = server.root / f"stdio-{next(_STDIO_LOGS)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ERLMCP_")} | dict(server.env)
        with log.open("wb") as stderr:
            command = [sys.executable, "-m", "app", "--transport", "stdio"]
            async with await anyio.open_process(command, cwd=ROOT, env=env, stderr=stderr) as process:
                assert process.stdin is not None
                assert process.stdout is not None
                try:
                    yield LinePeer(door, key, process.stdin, process.stdout, log)
                finally:
                    await process.stdin.aclose()  # the server exits at the end of its input
                    with anyio.move_on_after(TIMEOUT):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()


@asynccontextmanager
async def session(door: str, server: Reachable, key: str | None = None) -> AsyncIterator[Peer]:
    """A peer ready for requests: initialized in the handshake era (its answer in ``opening``)."""
    async with connect(door, server, key) as peer:
        if peer.era == HANDSHAKE:
            peer.opening = await peer.ask(peer.initialize_request(0))
            assert "result" in peer.opening, f"{door}: initialize was refused: {peer.opening}"
        yield peer
