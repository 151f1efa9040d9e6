"""A load generator that speaks streamable HTTP: initialize, the session header, JSON or SSE responses.

It is written on raw asyncio streams (HTTP/1.1 keep-alive, one connection per client) so that one core of
load can drive a server core; every response is checked, not just counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Connection", "LoadResult", "open_session", "run_load"]

PROTOCOL = "2025-11-25"


class ProtocolError(RuntimeError):
    """The server answered something other than what MCP asks for."""


@dataclass
class Connection:
    """One keep-alive HTTP/1.1 connection."""

    host: str
    port: int
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        assert self.writer is not None
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
        ]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
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


async def open_session(host: str, port: int, path: str, connection: Connection | None = None) -> dict[str, str]:
    """initialize + notifications/initialized (on ``connection``, or a new one); the headers later requests carry."""
    own = connection is None
    if connection is None:
        connection = Connection(host, port)
        await connection.connect()
    try:
        params = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
        body = orjson.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
        status, headers, raw = await connection.post(path, body, {})
        if status != 200:
            raise ProtocolError(f"initialize answered HTTP {status}: {raw[:200]!r}")
        response_message(headers, raw, 0)
        session = {"MCP-Protocol-Version": PROTOCOL}
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
        }
        if self.cpu_seconds is not None and self.requests:
            found["cpu_us_per_req"] = round(self.cpu_seconds / self.requests * 1e6, 2)
        return found


async def run_load(
    host: str,
    port: int,
    path: str,
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    cpu_clock: Callable[[], float] | None = None,
) -> LoadResult:
    """C clients on one session, each sending tools/call echo back to back; every answer is checked.

    With ``cpu_clock`` (the server's CPU seconds so far) the result also has the CPU the server spent over the
    measured seconds, read when they begin and when they end.
    """
    session = await open_session(host, port, path)
    ids = itertools.count(1)
    result = LoadResult(concurrency, seconds)
    started = time.perf_counter()
    measuring_from = started + warmup
    stop_at = measuring_from + seconds

    async def client() -> None:
        connection = Connection(host, port)
        await connection.connect()
        try:
            while (now := time.perf_counter()) < stop_at:
                request_id = next(ids)
                body = orjson.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": request_id,
                        "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"text": "hello"}},
                    }
                )
                status, headers, raw = await connection.post(path, body, session)
                ok = False
                if status == 200:
                    message = response_message(headers, raw, request_id)
                    content = (message.get("result") or {}).get("content") or [{}]
                    ok = content[0].get("text") == "hello" and not message["result"].get("isError")
                done = time.perf_counter()
                if now >= measuring_from and done <= stop_at:
                    result.requests += 1
                    result.latencies.append(done - now)
                    if not ok:
                        result.errors += 1
        finally:
            await connection.close()

    async def sample_cpu(clock: Callable[[], float]) -> None:
        await asyncio.sleep(max(0.0, measuring_from - time.perf_counter()))
        first = clock()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        result.cpu_seconds = clock() - first

    samplers = [sample_cpu(cpu_clock)] if cpu_clock is not None else []
    await asyncio.gather(*(client() for _ in range(concurrency)), *samplers)
    return result
