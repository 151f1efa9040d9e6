"""WebSocket on ``/ws`` (subprotocol ``mcp``): one JSON-RPC message per text frame.

The first message must arrive within ``first_message_seconds`` of the upgrade (the header deadline of the HTTP
port), or the server closes with 1008 and a reason: the upgrade's own deadlines end with the upgrade, and a
connection that never speaks would otherwise be held for as long as its client liked (a frame sent a byte at a
time does not put the deadline off). Once the first message is in, a connection may be quiet for as long as it
likes.

A WebSocket holds one of its principal's connection slots from its upgrade until it closes (the gate's
per-principal cap, ``ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL``): one over the cap has its upgrade refused with 429,
``Retry-After`` and a JSON-RPC error body (or, where the server cannot answer an upgrade with a response of its
own, is closed with 1008 and a reason). A WebSocket whose key is revoked or whose token expires is refused at its
next message, then closed with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.protocol.channel import Channel, Hangup
from app.protocol.core import ProtocolCore
from app.security.gate import Refusal
from app.transports.bodies import refused

__all__ = ["SUBPROTOCOL", "websocket_handler"]

log = structlog.get_logger(__name__)

SUBPROTOCOL = "mcp"
_POLICY = 1008  # RFC 6455 close code for refused callers
_DENIAL = "websocket.http.response"  # the ASGI extension that answers an upgrade with an HTTP response


def websocket_handler(core: ProtocolCore, *, first_message_seconds: float) -> Callable[[WebSocket], Awaitable[None]]:
    """The ``/ws`` route: Host/Origin and credentials checked before the upgrade, then messages both ways. A frame
    that is no message (binary, over the size limit) is answered with an error and the connection goes on."""

    async def first_frame(websocket: WebSocket) -> Message | None:
        """The first frame after the upgrade, or None (and the connection closed) when it is late."""
        try:
            return await asyncio.wait_for(websocket.receive(), first_message_seconds)
        except TimeoutError:
            client = websocket.client.host if websocket.client else None
            log.warning("connection cut: no first message in time", transport="websocket", client=client,
                        seconds=first_message_seconds)  # fmt: skip
            core.metrics.connection_refused("websocket", "first_message_deadline")
            reason = f"no first message within {first_message_seconds:g} s of the upgrade"
            await websocket.close(code=_POLICY, reason=reason)
            return None

    async def over_cap(websocket: WebSocket, refusal: Refusal) -> None:
        """Refuse the upgrade with the 429 and its JSON-RPC error; without the extension that allows it, accept
        and close at once with 1008 and the reason."""
        if _DENIAL in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(refused(refusal))
            return
        await websocket.accept(subprotocol=SUBPROTOCOL)
        await websocket.close(code=_POLICY, reason="too many open connections for this client")

    async def handle(websocket: WebSocket) -> None:
        caller = await core.gate.admit(websocket.headers, websocket.client.host if websocket.client else None)
        if isinstance(caller, Refusal) or SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            await websocket.close(code=_POLICY)  # before accept: the client sees the upgrade refused (403)
            return
        slot = core.gate.hold(caller, "websocket")
        if isinstance(slot, Refusal):
            await over_cap(websocket, slot)
            return
        try:
            await websocket.accept(subprotocol=SUBPROTOCOL)

            async def send(data: bytes) -> None:
                await websocket.send_text(data.decode())

            channel = Channel(core, caller, send=send, transport="websocket")
            try:
                frame = await first_frame(websocket)
                while frame is not None and frame["type"] != "websocket.disconnect":
                    text = frame.get("text")
                    if text is None:
                        await channel.unreadable("MCP messages are text frames of JSON, not binary frames")
                    else:
                        await channel.receive(text.encode())
                    frame = await websocket.receive()
            except WebSocketDisconnect:
                pass
            except Hangup as hangup:  # its credential is gone: the refusal was sent, the connection ends
                with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # unless the client went
                    await websocket.close(code=_POLICY, reason=hangup.reason)
            finally:
                await channel.close()
        finally:
            slot.release()

    return handle
