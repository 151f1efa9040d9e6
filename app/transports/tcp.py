"""The TCP transport of the seed design: newline-delimited JSON-RPC, one session per connection.

TCP has no headers, so when authentication is on the first message must carry the API key in
``params._meta["io.erlmcp/apiKey"]``; a connection whose first message does not is answered with an error and
closed.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog

from app.jsonrpc import InvalidRequest, error_response
from app.security.keys import ALL_TOOLS
from app.transports.lines import encode_line, serve_lines
from app.transports.streamable_http import McpEndpoint

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


async def serve_tcp(endpoint: McpEndpoint, *, host: str, port: int, max_message_bytes: int) -> asyncio.Server:
    """Start listening; the returned server is closed by the caller."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        auth = endpoint.authenticator
        principal = "anonymous"
        scopes: frozenset[str] = ALL_TOOLS
        first: bytes | None = None
        if auth.enabled:
            try:
                first = await reader.readline()
            except ValueError:
                first = b""
            key = _presented_key(first)
            headers = {"authorization": f"Bearer {key}"} if key else {}
            verdict = await auth.authenticate(headers)
            if verdict.principal is None:
                refusal = InvalidRequest(f'Unauthorized: the first message needs params._meta["{API_KEY_META}"]')
                writer.write(encode_line(orjson.dumps(error_response(None, refusal))))
                await writer.drain()
                writer.close()
                return
            principal, scopes = auth.principal(headers), verdict.scopes

        async def send(data: bytes) -> None:
            writer.write(encode_line(data))
            await writer.drain()

        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        connection = endpoint.connection(send=send, principal=principal, transport="tcp", scopes=scopes,
                                         address=address)  # fmt: skip
        log.info("tcp connection", peer=str(peer))
        try:
            if first and first.strip():
                await connection.receive(first)
            await serve_lines(reader, connection)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await connection.close()
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=max_message_bytes)
