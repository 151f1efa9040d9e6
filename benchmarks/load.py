"""A load generator that speaks streamable HTTP: initialize, the session header, JSON or SSE responses, and the
2026-07-28 stateless wire (no initialize; every request carries its ``_meta`` and the headers that mirror it).

It is written on raw asyncio streams (HTTP/1.1 keep-alive, one connection per client) on uvloop, with each
request's bytes built once but for the JSON-RPC id, so that one core of load can drive a server core; every
response is checked, not just counted. It reports its own CPU per request, so that a row capped by the client
shows as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import resource
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
import uvloop

__all__ = ["Connection", "LoadResult", "Wire", "open_session", "run", "run_load", "stateless_headers"]

PROTOCOL = "2025-11-25"
STATELESS_PROTOCOL = "2026-07-28"
Wire = Literal["session", "stateless"]  # initialize + Mcp-Session-Id, or the 2026-07-28 stateless wire
META = {
    "io.modelcontextprotocol/protocolVersion": STATELESS_PROTOCOL,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
}
_ECHO = {"name": "echo", "arguments": {"text": "hello"}}
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh uvloop event loop (the generator's loop)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


class ProtocolError(RuntimeError):
    """The server answered something other than what MCP asks for."""


def stateless_headers(method: str, name: str | None = None) -> dict[str, str]:
    """The headers a 2026-07-28 request carries: the version and the method (and the tool's name) of its body."""
    headers = {"MCP-Protocol-Version": STATELESS_PROTOCOL, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def echo_call(request_id: int, wire: Wire) -> bytes:
    """The tools/call echo request body of ``wire``."""
    params: dict[str, Any] = dict(_ECHO) if wire == "session" else {**_ECHO, "_meta": META}
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection; counts the responses it read."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    answered: int = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
        ]
        head += [f"{k}: {v}" for k, v in headers.items()]
        return await self.send(("\r\n".join(head) + "\r\n").encode(), body)

    async def send(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Write ``head`` (the request line and headers but Content-Length, each ending in CRLF) and ``body``."""
        assert self.writer is not None
        self.writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
        return await self._response()

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = b""
        self.answered += 1
        return status, headers, body


def response_message(headers: dict[str, str], body: bytes, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response to ``request_id`` in a JSON body or an SSE stream."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        for line in body.split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip():
                message = orjson.loads(line[5:])
                if message.get("id") == request_id:
                    return dict(message)
        raise ProtocolError(f"no response to request {request_id} in the event stream")
    return dict(orjson.loads(body))


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


async def open_session(
    host: str, port: int, path: str, connection: Connection | None = None, *, key: str | None = None
) -> dict[str, str]:
    """initialize + notifications/initialized (on ``connection``, or a new one); the headers later requests carry
    (with ``key`` as the bearer token)."""
    own = connection is None
    if connection is None:
        connection = Connection(host, port)
        await connection.connect()
    try:
        params = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
        body = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        status, headers, raw = await connection.post(path, body, _bearer(key))
        if status != 200:
            raise ProtocolError(f"initialize answered HTTP {status}: {raw[:200]!r}")
        response_message(headers, raw, 0)
        session = {"MCP-Protocol-Version": PROTOCOL, **_bearer(key)}
        if "mcp-session-id" in headers:
            session["Mcp-Session-Id"] = headers["mcp-session-id"]
        note = orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        status, _, _ = await connection.post(path, note, session)
        if status not in {200, 202}:
            raise ProtocolError(f"notifications/initialized answered HTTP {status}")
        return session
    finally:
        if own:
            await connection.close()


@dataclass
class LoadResult:
    """What one load run measured."""

    concurrency: int
    seconds: float
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu_seconds: float | None = None  # the server's CPU time over the measured seconds, when asked for
    client_cpu_seconds: float | None = None  # the load generator's own CPU time over the measured seconds
    answered: int = 0  # every HTTP response read in the run: warm-up, the session's opening, the measured ones
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "errors": self.errors,
            "req_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(50) * 1000, 3),
            "p90_ms": round(self.percentile(90) * 1000, 3),
            "p99_ms": round(self.percentile(99) * 1000, 3),
            "answered": self.answered,
        }
        if self.cpu_seconds is not None and self.requests:
            found["cpu_us_per_req"] = round(self.cpu_seconds / self.requests * 1e6, 2)
        if self.client_cpu_seconds is not None and self.requests:
            found["client_cpu_us_per_req"] = round(self.client_cpu_seconds / self.requests * 1e6, 2)
        if self.first_error is not None:
            found["first_error"] = self.first_error
        return found


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _echoed(status: int, headers: dict[str, str], raw: bytes, request_id: int) -> str | None:
    """None when the answer is the echo of ``request_id``, else what is wrong with it."""
    if status != 200:
        return f"HTTP {status}: {raw[:200]!r}"
    try:
        message = response_message(headers, raw, request_id)
    except (ProtocolError, orjson.JSONDecodeError) as error:
        return str(error)
    result = message.get("result") or {}
    content = result.get("content") or [{}]
    if message.get("id") != request_id or content[0].get("text") != "hello" or result.get("isError"):
        return f"not the echo of request {request_id}: {raw[:200]!r}"
    return None


async def run_load(
    host: str,
    port: int,
    path: str,
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    cpu_clock: Callable[[], float] | None = None,
    wire: Wire = "session",
    key: str | None = None,
) -> LoadResult:
    """C clients, each sending tools/call echo back to back; every answer is checked.

    ``wire`` "session": one session (initialize first) shared by the clients; "stateless": no initialize, each
    request carries the 2026-07-28 ``_meta`` and the MCP-Protocol-Version, Mcp-Method and Mcp-Name headers.
    ``key``: sent as ``Authorization: Bearer``.

    With ``cpu_clock`` (the server's CPU seconds so far) the result also has the CPU the server spent over the
    measured seconds, read when they begin and when they end; the generator's own CPU is always read so.
    """
    connections: list[Connection] = []
    if wire == "session":
        opener = Connection(host, port)
        connections.append(opener)
        await opener.connect()
        try:
            headers = await open_session(host, port, path, opener, key=key)
        finally:
            await opener.close()
    else:
        headers = {**stateless_headers("tools/call", "echo"), **_bearer(key)}
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             "Accept: application/json, text/event-stream", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    head = ("\r\n".join(lines) + "\r\n").encode()
    before, after = echo_call(0, wire).split(b'"id":0', 1)  # the body's bytes around the id
    ids = itertools.count(1)
    result = LoadResult(concurrency, seconds)
    started = time.perf_counter()
    measuring_from = started + warmup
    stop_at = measuring_from + seconds

    async def client() -> None:
        connection = Connection(host, port)
        connections.append(connection)
        await connection.connect()
        try:
            while (now := time.perf_counter()) < stop_at:
                request_id = next(ids)
                body = b'%s"id":%d%s' % (before, request_id, after)
                broken = False
                try:
                    status, headers, raw = await connection.send(head, body)
                    wrong = _echoed(status, headers, raw, request_id)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    wrong, broken = f"{type(error).__name__}: {error}", True
                done = time.perf_counter()
                if now >= measuring_from and done <= stop_at:
                    result.requests += 1
                    result.latencies.append(done - now)
                    if wrong is not None:
                        result.errors += 1
                        result.first_error = result.first_error or wrong
                if broken:  # open a new connection in its place
                    await connection.close()
                    await connection.connect()
        finally:
            await connection.close()

    async def sample_cpu(clock: Callable[[], float] | None) -> None:
        await asyncio.sleep(max(0.0, measuring_from - time.perf_counter()))
        first, own = (clock() if clock else 0.0), _own_cpu()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        result.client_cpu_seconds = _own_cpu() - own
        if clock is not None:
            result.cpu_seconds = clock() - first

    await asyncio.gather(*(client() for _ in range(concurrency)), sample_cpu(cpu_clock))
    result.answered = sum(connection.answered for connection in connections)
    return result
