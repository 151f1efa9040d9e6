"""WebSocket on ``/ws`` (subprotocol ``mcp``): one JSON-RPC message per text frame.

The upgrade is checked before it is accepted: Host and Origin, the subprotocols offered (``mcp`` among them) and
the credential, from an ``Authorization`` or ``X-API-Key`` header or, for a client that cannot set headers (a
browser, the TS SDK's ``WebSocketClientTransport``), from the Kubernetes bearer subprotocol
``base64url.bearer.authorization.k8s.io.<base64url of the credential>`` (app/transports/subprotocols.py). The
answer names ``mcp`` alone, so that a credential never comes back. An upgrade refused is answered with the HTTP
status and the JSON-RPC error an HTTP request would get (401 with ``WWW-Authenticate`` for a missing or wrong
credential, 400 for subprotocols the server cannot read, 403 or 421 for Origin and Host); where the server cannot
answer an upgrade with a response of its own, it is accepted and closed at once with 1008 and the reason.

The first message must arrive within ``first_message_seconds`` of the upgrade (the header deadline of the HTTP
port), or the server closes with 1008 and a reason: the upgrade's own deadlines end with the upgrade, and a
connection that never speaks would otherwise be held for as long as its client liked (a frame sent a byte at a
time does not put the deadline off). Once the first message is in, a connection may be quiet for as long as it
likes.

A WebSocket holds one of its principal's connection slots from its upgrade until it closes (the gate's
per-principal cap, ``ERLMCP_MAX_CONNECTIONS_PER_PRINCIPAL``): one over the cap has its upgrade refused the same
way, with 429 and ``Retry-After``. A WebSocket whose key is revoked or whose token expires is refused at its
next message, then closed with 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from starlette.responses import Response
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from app.protocol.channel import Channel, Hangup
from app.protocol.core import ProtocolCore
from app.security.gate import Refusal
from app.transports.bodies import refuse, refused
from app.transports.subprotocols import BadCredential, BadOffer, admission_headers, read_offer

__all__ = ["SUBPROTOCOL", "websocket_handler"]

log = structlog.get_logger(__name__)

SUBPROTOCOL = "mcp"
_POLICY = 1008  # RFC 6455 close code for refused callers
_DENIAL = "websocket.http.response"  # the ASGI extension that answers an upgrade with an HTTP response
_MAX_REASON_BYTES = 123  # of a close frame's reason (RFC 6455 5.5: 125 bytes of payload, 2 of them the code)


def _close_reason(message: str) -> str:
    """``message`` cut to fit a close frame, on a character boundary."""
    return message.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")


def websocket_handler(core: ProtocolCore, *, first_message_seconds: float) -> Callable[[WebSocket], Awaitable[None]]:
    """The ``/ws`` route: subprotocols, Host/Origin and credentials checked before the upgrade, then messages both
    ways. A frame that is no message (binary, over the size limit) is answered with an error and the connection
    goes on."""

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

    async def deny(websocket: WebSocket, response: Response, reason: str) -> None:
        """Refuse the upgrade with ``response`` (an HTTP status and a JSON-RPC error); without the extension that
        allows it, accept and close at once with 1008 and ``reason``."""
        if _DENIAL in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(response)
            return
        offered = SUBPROTOCOL in websocket.scope.get("subprotocols", [])
        await websocket.accept(subprotocol=SUBPROTOCOL if offered else None)
        await websocket.close(code=_POLICY, reason=_close_reason(reason))

    async def handle(websocket: WebSocket) -> None:
        try:
            offer = read_offer(websocket.headers.getlist("sec-websocket-protocol"), SUBPROTOCOL)
            headers = admission_headers(websocket.headers, offer)
        except BadOffer as bad:
            if isinstance(bad, BadCredential):
                core.metrics.auth_failures.inc()
            await deny(websocket, refuse(400, str(bad)), str(bad))
            return
        caller = await core.gate.admit(headers, websocket.client.host if websocket.client else None)
        if isinstance(caller, Refusal):
            await deny(websocket, refused(caller), caller.error.message)
            return
        slot = core.gate.hold(caller, "websocket")
        if isinstance(slot, Refusal):
            await deny(websocket, refused(slot), "too many open connections for this client")
            return
        try:
            await websocket.accept(subprotocol=SUBPROTOCOL)  # never the bearer subprotocol: it holds a credential

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
