"""stdio: newline-delimited JSON-RPC on stdin and stdout; logs go to stderr only. The server exits at EOF."""

from __future__ import annotations

import asyncio
import sys

from app.protocol.channel import Channel
from app.protocol.core import ProtocolCore
from app.security.gate import Caller
from app.transports.lines import encode_line, serve_lines

__all__ = ["serve_stdio"]


async def serve_stdio(core: ProtocolCore) -> None:
    """Serve one client on this process's stdin and stdout until stdin closes. The client started this process:
    it is the principal ``stdio``, with every scope."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=core.gate.max_message_bytes)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)

    async def send(data: bytes) -> None:
        writer.write(encode_line(data))
        await writer.drain()

    channel = Channel(core, Caller("stdio"), send=send, transport="stdio")
    try:
        await serve_lines(reader, channel)
    finally:
        await channel.close()
