"""Long-lived HTTP event streams (``GET /sse``, ``GET /mcp``): each holds a connection slot of its client while it
is sent, and ends once its credential is gone.

The slot is taken when the stream is admitted (:meth:`~app.security.gate.Gate.hold`, so that one over the cap is a
429 before any byte of a stream is sent) and released when the response is done, however it ends: by
:class:`HeldStream`, whose sending ends in a ``finally``, also when its body never began (a client gone before
it). :func:`until_revoked` checks the stream's credential again with every event and keep-alive it sends: once its
API key is revoked or its token expired, the stream's last event is the JSON-RPC error saying so.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.security.gate import Caller, Gate, Slot
from app.transports.sse import format_event

__all__ = ["IN_FLIGHT_RELEASE", "HeldStream", "until_revoked"]

# The scope key under which McpRoute (app/middleware.py) leaves a POST's release of its place among the requests in
# progress: a POST that becomes a stream for as long as the client wants (subscriptions/listen) hands its place
# back at once, and holds a connection slot of its client instead.
IN_FLIGHT_RELEASE = "erlmcp.in_flight_release"


class HeldStream(StreamingResponse):
    """An event stream that holds ``slot`` until it is done."""

    def __init__(
        self, content: AsyncIterator[bytes], slot: Slot, *, media_type: str, headers: Mapping[str, str]
    ) -> None:
        super().__init__(content, media_type=media_type, headers=dict(headers))
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slot.release()


async def until_revoked(
    chunks: AsyncIterator[bytes],
    gate: Gate,
    caller: Caller,
    transport: str,
    *,
    already_said: Callable[[], bool] = lambda: False,
) -> AsyncIterator[bytes]:
    """The stream's chunks until its caller's credential is gone; then one event with the JSON-RPC error, and the
    end (counted and logged by the gate). It is checked before each chunk, and once more when the chunks end,
    unless ``already_said()``: the stream's channel refused a message and sent (and counted) the error itself."""
    try:
        async for chunk in chunks:
            if gate.revoked(caller) is not None:
                break
            yield chunk
        gone = None if already_said() else gate.revoked(caller)
        if gone is not None:
            gate.cut(transport, gone)
            yield format_event(None, orjson.dumps(gone.answer(None)))
    finally:
        if isinstance(chunks, AsyncGenerator):  # stopped early: its own clean-up runs now, not when collected
            await chunks.aclose()
