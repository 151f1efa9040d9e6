"""Client-side transports for the SDK's ``Client`` over WebSocket and TCP (the SDK ships HTTP, SSE and stdio).

Each is an async context manager yielding the SDK's (read, write) message streams, framed as the server's
transport expects: one JSON-RPC message per WebSocket text frame, or per line on TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.message import SessionMessage
from websockets.asyncio.client import connect


@asynccontextmanager
async def _bridge(
    receive: Callable[[], Awaitable[str | None]], send: Callable[[str], Awaitable[None]]
) -> AsyncIterator[Any]:
    incoming_writer, incoming = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    outgoing, outgoing_reader = anyio.create_memory_object_stream[SessionMessage](16)

    async def pump_in() -> None:
        async with incoming_writer:
            while (text := await receive()) is not None:
                if text.strip():
                    await incoming_writer.send(
                        SessionMessage(types.jsonrpc_message_adapter.validate_json(text, by_name=False))
                    )

    async def pump_out() -> None:
        async with outgoing_reader:
            async for message in outgoing_reader:
                await send(message.message.model_dump_json(by_alias=True, exclude_unset=True))

    async with anyio.create_task_group() as group:
        group.start_soon(pump_in)
        group.start_soon(pump_out)
        try:
            yield incoming, outgoing
        finally:
            group.cancel_scope.cancel()
            incoming.close()  # the caller's ends: the SDK's Client closes them, a test using the streams may not
            outgoing.close()


@asynccontextmanager
async def websocket_transport(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Any]:
    async with connect(url, subprotocols=["mcp"], additional_headers=headers or {}) as ws:  # type: ignore[list-item]

        async def receive() -> str | None:
            try:
                frame = await ws.recv()
            except Exception:
                return None
            return frame if isinstance(frame, str) else frame.decode()

        async with _bridge(receive, ws.send) as streams:
            yield streams


@asynccontextmanager
async def tcp_transport(host: str, port: int) -> AsyncIterator[Any]:
    reader, writer = await asyncio.open_connection(host, port)

    async def receive() -> str | None:
        line = await reader.readline()
        return line.decode() if line else None

    async def send(text: str) -> None:
        writer.write(text.encode() + b"\n")
        await writer.drain()

    try:
        async with _bridge(receive, send) as streams:
            yield streams
    finally:
        writer.close()
