"""WebSocket on ``/ws`` (subprotocol ``mcp``): one JSON-RPC message per text frame."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect

from app.transports.streamable_http import McpEndpoint

__all__ = ["SUBPROTOCOL", "websocket_handler"]

SUBPROTOCOL = "mcp"
# Close codes (RFC 6455): policy violation for refused callers, too big, unsupported data.
_POLICY, _TOO_BIG, _UNSUPPORTED = 1008, 1009, 1003


def websocket_handler(endpoint: McpEndpoint, *, max_message_bytes: int) -> Callable[[WebSocket], Awaitable[None]]:
    """The ``/ws`` route: Host/Origin and key checked before the upgrade, then messages both ways."""

    async def handle(websocket: WebSocket) -> None:
        verdict = await endpoint.authenticator.authenticate(websocket.headers)
        if endpoint.origins.check(websocket.headers) is not None or verdict.principal is None:
            await websocket.close(code=_POLICY)  # before accept: the client sees the upgrade refused (403)
            return
        if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            await websocket.close(code=_POLICY)
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)

        async def send(data: bytes) -> None:
            await websocket.send_text(data.decode())

        connection = endpoint.connection(
            send=send,
            principal=endpoint.authenticator.principal(websocket.headers),
            transport="websocket",
            scopes=verdict.scopes,
            address=websocket.client.host if websocket.client else None,
        )
        try:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                text = frame.get("text")
                if text is None:
                    await websocket.close(code=_UNSUPPORTED, reason="MCP messages are text frames of JSON")
                    break
                if len(text.encode()) > max_message_bytes:
                    await websocket.close(code=_TOO_BIG, reason=f"messages are limited to {max_message_bytes} bytes")
                    break
                await connection.receive(text.encode())
        except WebSocketDisconnect:
            pass
        finally:
            await connection.close()

    return handle
