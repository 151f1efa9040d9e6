"""Newline-delimited JSON-RPC over a byte stream: the framing of stdio and TCP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.protocol.channel import Channel

__all__ = ["Overlong", "encode_line", "read_line", "read_message", "serve_lines"]


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line over the reader's limit, skipped up to its own newline: ``head`` is what was read of its start."""

    head: bytes


async def read_line(reader: asyncio.StreamReader) -> bytes | Overlong:
    """The next line with its newline; a last line without one as it is; ``b""`` once the stream has ended. A line
    over the reader's limit is read no further than the limit and skipped (:class:`Overlong`)."""
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as end:  # the stream ended; a last line without its newline still counts
        return end.partial
    except asyncio.LimitOverrunError as over:
        head = await reader.readexactly(over.consumed)
        await _skip_rest_of_line(reader)
        return Overlong(head)


async def read_message(reader: asyncio.StreamReader) -> bytes | Overlong:
    """The next line that is not blank (a message, or what is left of an over-long one); ``b""`` at the end."""
    while True:
        line = await read_line(reader)
        if isinstance(line, Overlong) or not line or line.strip():
            return line


async def serve_lines(reader: asyncio.StreamReader, channel: Channel) -> None:
    """Hand each line to the channel until the stream ends. A line over the reader's limit is refused (with its
    id when the id comes before the limit) and skipped up to its own newline: the next line is served as usual."""
    while line := await read_message(reader):
        if isinstance(line, Overlong):
            await channel.too_large(line.head)
        else:
            await channel.receive(line)


async def _skip_rest_of_line(reader: asyncio.StreamReader) -> None:
    """Drop what is left of an over-long line, up to and with its newline, or up to the end of the stream."""
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as over:
            await reader.readexactly(over.consumed)
        except asyncio.IncompleteReadError:
            return


def encode_line(data: bytes) -> bytes:
    """One message as a line (JSON from orjson has no raw newlines)."""
    return data + b"\n"
