"""The other transports on the same port: WebSocket (``/ws``, subprotocol ``mcp``) speaks the same JSON-RPC."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect
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
    try:
        with connect(
            url,
            additional_headers=headers,
            ssl=context,
            open_timeout=client.target.timeout,
            subprotocols=[Subprotocol("mcp")],
        ) as socket:
            socket.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}))
            reply = json.loads(socket.recv(timeout=client.target.timeout))
    except InvalidStatus as exc:
        raise CheckFailed(f"WebSocket {url}: the upgrade was refused with HTTP {exc.response.status_code}") from exc
    except (WebSocketException, OSError, TimeoutError, ValueError) as exc:
        raise CheckFailed(f"WebSocket {url}: {type(exc).__name__}: {exc}") from exc
    version = (reply.get("result") or {}).get("protocolVersion") if isinstance(reply, dict) else None
    if not isinstance(version, str):
        raise CheckFailed(f"WebSocket {url}: initialize answered {reply!r}")
    return f"initialize over /ws -> {version}"


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (("transport.websocket", check_websocket),)
