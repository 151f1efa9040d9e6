"""WebSocket on ``/ws`` (subprotocol ``mcp``): one JSON-RPC message per text frame."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.protocol.channel import Channel
from app.protocol.core import ProtocolCore
from app.security.gate import Refusal

__all__ = ["SUBPROTOCOL", "websocket_handler"]

SUBPROTOCOL = "mcp"
_POLICY = 1008  # RFC 6455 close code for refused callers


def websocket_handler(core: ProtocolCore) -> Callable[[WebSocket], Awaitable[None]]:
    """The ``/ws`` route: Host/Origin and credentials checked before the upgrade, then messages both ways. A frame
    that is no message (binary, over the size limit) is answered with an error and the connection goes on."""

    async def handle(websocket: WebSocket) -> None:
        caller = await core.gate.admit(websocket.headers, websocket.client.host if websocket.client else None)
        if isinstance(caller, Refusal) or SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            await websocket.close(code=_POLICY)  # before accept: the client sees the upgrade refused (403)
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)

        async def send(data: bytes) -> None:
            await websocket.send_text(data.decode())

        channel = Channel(core, caller, send=send, transport="websocket")
        try:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                text = frame.get("text")
                if text is None:
                    await channel.unreadable("MCP messages are text frames of JSON, not binary frames")
                else:
                    await channel.receive(text.encode())
        except WebSocketDisconnect:
            pass
        finally:
            await channel.close()

    return handle
