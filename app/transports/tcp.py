"""The TCP transport of the seed design: newline-delimited JSON-RPC, one session per connection.

TCP has no headers, so when authentication is on the first message must carry the API key in
``params._meta["io.erlmcp/apiKey"]``; a connection whose first message does not is answered with an error and
closed. The first message must arrive whole within ``first_message_seconds`` of the connection (the header
deadline of the HTTP port), or the connection is answered with an error saying so and closed: without it, anyone
who reaches the port could hold connections, unauthenticated, for as long as they liked (a byte now and then does
not put the deadline off). Once the first message is in, a connection may be quiet for as long as it likes.

An authenticated connection holds one of its principal's connection slots until it closes (the gate's per-principal
cap, ``ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL``): one over the cap is answered with a JSON-RPC error line (429's
``-32029``) and closed. A connection whose key is revoked or whose token expires is refused at its next message
with an error line, then closed.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import structlog

from app.jsonrpc import InvalidRequest, error_response, leading_request_id
from app.protocol.channel import Channel, Hangup
from app.protocol.core import ProtocolCore
from app.security.gate import Caller, Refusal
from app.transports.lines import Overlong, encode_line, read_message, serve_lines

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


def _late(seconds: float) -> bytes:
    """The line a connection gets when its first message did not arrive in time."""
    why = InvalidRequest(f"Invalid Request: no complete first message within {seconds:g} s of connecting")
    return encode_line(orjson.dumps(error_response(None, why)))


async def _refuse(writer: asyncio.StreamWriter, refusal: Refusal, head: bytes) -> None:
    """Answer the first message (whose start is ``head``) with the refusal, and close."""
    writer.write(encode_line(orjson.dumps(refusal.answer(leading_request_id(head)))))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def serve_tcp(core: ProtocolCore, *, host: str, port: int, first_message_seconds: float) -> asyncio.Server:
    """Start listening; the returned server is closed by the caller."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        try:
            first = await asyncio.wait_for(read_message(reader), first_message_seconds)
        except TimeoutError:
            log.warning("connection cut: no first message in time", transport="tcp", client=address,
                        seconds=first_message_seconds)  # fmt: skip
            core.metrics.connection_refused("tcp", "first_message_deadline")
            writer.write(_late(first_message_seconds))  # a few bytes: the socket buffer takes them, read or not
            writer.close()
            return
        except ConnectionError:
            writer.close()
            return
        head = first.head if isinstance(first, Overlong) else first
        caller: Caller | Refusal = Caller("anonymous", address=address)
        if core.gate.authenticator.enabled:
            key = None if isinstance(first, Overlong) else _presented_key(first)
            caller = await core.gate.admit_key(key, address)
            if isinstance(caller, Refusal) and key is None:
                missing = f'Unauthorized: the first message needs params._meta["{API_KEY_META}"]'
                caller = Refusal(401, InvalidRequest(missing))
        if isinstance(caller, Refusal):
            await _refuse(writer, caller, head)
            return
        slot = core.gate.hold(caller, "tcp")
        if isinstance(slot, Refusal):
            await _refuse(writer, slot, head)
            return

        async def send(data: bytes) -> None:
            writer.write(encode_line(data))
            await writer.drain()

        channel = Channel(core, caller, send=send, transport="tcp")
        log.info("tcp connection", peer=str(peer))
        try:
            if isinstance(first, Overlong):
                await channel.too_large(first.head)
            elif first:
                await channel.receive(first)
            await serve_lines(reader, channel)
        except (ConnectionError, asyncio.IncompleteReadError, Hangup):
            pass  # gone, or cut (its credential is gone: the refusal was its last line)
        finally:
            slot.release()  # first: nothing below can keep the slot held
            await channel.close()
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=core.gate.max_message_bytes)
