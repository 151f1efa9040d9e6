"""Newline-delimited JSON-RPC over a byte stream: the framing of stdio and TCP."""

from __future__ import annotations

import asyncio

from app.protocol.channel import Channel

__all__ = ["encode_line", "serve_lines"]


async def serve_lines(reader: asyncio.StreamReader, channel: Channel) -> None:
    """Hand each line to the channel until the stream ends. A line over the reader's limit is refused (with its
    id when the id comes before the limit) and skipped up to its own newline: the next line is served as usual."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:  # the stream ended; a last line without its newline still counts
            if end.partial.strip():
                await channel.receive(end.partial)
            return
        except asyncio.LimitOverrunError as over:
            await channel.too_large(await reader.readexactly(over.consumed))
            if not await _skip_rest_of_line(reader):
                return
            continue
        if line.strip():
            await channel.receive(line)


async def _skip_rest_of_line(reader: asyncio.StreamReader) -> bool:
    """Drop what is left of an over-long line, up to and with its newline; False when the stream ends first."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return True
        except asyncio.LimitOverrunError as over:
            await reader.readexactly(over.consumed)
        except asyncio.IncompleteReadError:
            return False


def encode_line(data: bytes) -> bytes:
    """One message as a line (JSON from orjson has no raw newlines)."""
    return data + b"\n"
