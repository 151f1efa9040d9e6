"""The other transports on the same port: WebSocket (``/ws``, subprotocol ``mcp``) speaks the same JSON-RPC.

The check uses websockets' asyncio client, on one thread: its sync client reads in a thread of its own while the
opening handshake writes, and an OpenSSL connection may not be used from two threads at once; over TLS on a loaded
machine the upgrade request then now and then never left (tests/verify/checks/test_transports.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from verify.client import CheckFailed, WireClient

__all__ = ["CHECKS"]


def check_websocket(client: WireClient) -> str:
    """/ws accepts the credentials, and initialize over it answers a supported revision."""
    parts = urlsplit(client.target.url)
    url = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))
    headers = {"Authorization": f"Bearer {client.target.api_key}"} if client.target.api_key else {}
    context = None
    if parts.scheme == "https":
        context = client.target.tls_context()
    params = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "erlmcp-verify", "version": "1"},
    }
    message = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params})

    async def initialize() -> Any:
        async with connect(
            url,
            additional_headers=headers,
            ssl=context,
            open_timeout=client.target.timeout,
            subprotocols=[Subprotocol("mcp")],
        ) as socket:
            await socket.send(message)
            async with asyncio.timeout(client.target.timeout):
                return json.loads(await socket.recv())

    try:
        reply = asyncio.run(initialize())
    except InvalidStatus as exc:
        raise CheckFailed(f"WebSocket {url}: the upgrade was refused with HTTP {exc.response.status_code}") from exc
    except (WebSocketException, OSError, TimeoutError, ValueError) as exc:
        raise CheckFailed(f"WebSocket {url}: {type(exc).__name__}: {exc}") from exc
    version = (reply.get("result") or {}).get("protocolVersion") if isinstance(reply, dict) else None
    if not isinstance(version, str):
        raise CheckFailed(f"WebSocket {url}: initialize answered {reply!r}")
    return f"initialize over /ws -> {version}"


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("transport.websocket", check_websocket),)
