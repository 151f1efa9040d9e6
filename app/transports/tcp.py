"""The TCP transport of the seed design: newline-delimited JSON-RPC, one session per connection.

TCP has no headers, so when authentication is on the first message must carry the API key in
``params._meta["io.erlmcp/apiKey"]``; a connection whose first message does not is answered with an error and
closed.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog

from app.jsonrpc import InvalidRequest, leading_request_id
from app.protocol.channel import Channel
from app.protocol.core import ProtocolCore
from app.security.gate import Caller, Refusal
from app.transports.lines import encode_line, serve_lines

__all__ = ["API_KEY_META", "serve_tcp"]

log = structlog.get_logger(__name__)

API_KEY_META = "io.erlmcp/apiKey"


def _presented_key(line: bytes) -> str | None:
    try:
        message = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    key = meta.get(API_KEY_META) if isinstance(meta, dict) else None
    return key if isinstance(key, str) else None


async def serve_tcp(core: ProtocolCore, *, host: str, port: int) -> asyncio.Server:
    """Start listening; the returned server is closed by the caller."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        first = b""
        caller: Caller | Refusal = Caller("anonymous", address=address)
        if core.gate.authenticator.enabled:
            try:
                first = await reader.readline()
            except ValueError:
                first = b""
            key = _presented_key(first)
            caller = await core.gate.admit_key(key, address)
            if isinstance(caller, Refusal) and key is None:
                missing = f'Unauthorized: the first message needs params._meta["{API_KEY_META}"]'
                caller = Refusal(401, InvalidRequest(missing))
        if isinstance(caller, Refusal):
            writer.write(encode_line(orjson.dumps(caller.answer(leading_request_id(first)))))
            await writer.drain()
            writer.close()
            return

        async def send(data: bytes) -> None:
            writer.write(encode_line(data))
            await writer.drain()

        channel = Channel(core, caller, send=send, transport="tcp")
        log.info("tcp connection", peer=str(peer))
        try:
            if first and first.strip():
                await channel.receive(first)
            await serve_lines(reader, channel)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await channel.close()
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=core.gate.max_message_bytes)
