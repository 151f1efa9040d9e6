"""stdio: newline-delimited JSON-RPC on stdin and stdout; logs go to stderr only. The server exits at EOF."""

from __future__ import annotations

import asyncio
import sys

from app.transports.lines import encode_line, serve_lines
from app.transports.streamable_http import McpEndpoint

__all__ = ["serve_stdio"]


async def serve_stdio(endpoint: McpEndpoint, *, max_message_bytes: int) -> None:
    """Serve one client on this process's stdin and stdout until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=max_message_bytes)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    async def send(data: bytes) -> None:
        writer.write(encode_line(data))
        await writer.drain()

    connection = endpoint.connection(send=send, principal="stdio", transport="stdio")
    try:
        await serve_lines(reader, connection)
    finally:
        await connection.close()
