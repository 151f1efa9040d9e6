"""HTTP bodies for every HTTP transport (``/mcp`` and ``/messages``): request bodies read within the size limit,
and JSON answers and refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.jsonrpc import InvalidRequest, RequestId, error_response
from app.security.gate import Refusal

__all__ = ["JsonBody", "TooLarge", "json_response", "read_body", "refuse", "refused"]


_JSON_TYPE = (b"content-type", b"application/json")


class JsonBody(Response):
    """A JSON answer without headers of its own: Starlette's :class:`Response` as ``Response(body,
    status_code=status, media_type="application/json")`` makes it (the same ``raw_headers``, Content-Length then
    Content-Type, and the same ``__call__``), its header block built directly rather than through
    ``render`` and ``init_headers``, which every answer on the hot path would run again."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)), _JSON_TYPE]


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON body (a JSON-RPC message)."""
    if headers is None and status >= 200 and status not in (204, 304):  # (those have no Content-Length)
        return JsonBody(orjson.dumps(body), status)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A refusal of the HTTP request itself (no message it answers): ``message`` says what was wrong."""
    return json_response(error_response(None, InvalidRequest(message)), status, headers)


def refused(refusal: Refusal, request_id: RequestId | None = None) -> Response:
    """The gate's refusal, answering the message with ``request_id``."""
    return json_response(refusal.answer(request_id), refusal.status, dict(refusal.headers))


_HEAD = 4096  # how much of an oversized body is kept: enough to read the id of the message it starts


@dataclass(frozen=True, slots=True)
class TooLarge:
    """A body over the limit; ``head`` is its start, when it was read (none when Content-Length said so)."""

    head: bytes = b""


async def read_body(request: Request, limit: int) -> bytes | TooLarge:
    """The body, or :class:`TooLarge` as soon as it is known to exceed ``limit`` bytes: from Content-Length before
    reading, or while reading a body of unknown length (never more than ``limit`` bytes are held). A client that
    disconnects leaves an empty body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return TooLarge()
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:  # (straight from the ASGI channel: most bodies come in one message)
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            return b""
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if not more and not chunks and len(chunk) <= limit:
            return chunk  # the whole body in one message, as most bodies come
        if chunk:
            size += len(chunk)
            if size > limit:
                return TooLarge(b"".join([*chunks, chunk])[:_HEAD])
            chunks.append(chunk)
        if not more:
            return b"".join(chunks)
