"""Newline-delimited JSON-RPC over a byte stream: the framing of stdio and TCP."""

from __future__ import annotations

import asyncio

from app.jsonrpc import InvalidRequest, error_response
from app.transports.connection import MessageConnection

__all__ = ["encode_line", "serve_lines"]


async def serve_lines(reader: asyncio.StreamReader, connection: MessageConnection) -> None:
    """Hand each line to the connection until the stream ends; an over-long line is refused and skipped."""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than the reader's limit: refuse it, and drop the rest of that line
            await connection.send(error_response(None, InvalidRequest("Invalid Request: the message is too large")))
            try:
                await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            continue
        if not line:
            return
        if line.strip():
            await connection.receive(line)


def encode_line(data: bytes) -> bytes:
    """One message as a line (JSON from orjson has no raw newlines)."""
    return data + b"\n"
