"""JSON-RPC 2.0: parsing the envelope, error codes, and building responses.

Errors form one small tree::

    JsonRpcError            a protocol error answered with an ``error`` object
    ├── ParseError          -32700, the body is not JSON
    ├── InvalidRequest      -32600, JSON but not a JSON-RPC 2.0 message
    ├── MethodNotFound      -32601
    ├── InvalidParams       -32602
    ├── InternalError       -32603
    ├── BatchAnswerFull     -32030, a batch item left unanswered: the batch's answers reached their byte budget
    ├── UrlElicitationRequired  -32042, the user must first complete the given URL elicitations (2025-11-25)
    ├── HeaderMismatch      -32020, an HTTP header disagrees with the body (2026-07-28)
    ├── MissingClientCapability  -32021, the request needs a capability the client did not declare (2026-07-28)
    └── UnsupportedVersion  -32022, the request's protocol version is not spoken here (2026-07-28)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "HEADER_MISMATCH",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "MISSING_CLIENT_CAPABILITY",
    "PARSE_ERROR",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "URL_ELICITATION_REQUIRED",
    "BATCH_ANSWER_FULL",
    "BatchAnswerFull",
    "HeaderMismatch",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "JsonRpcError",
    "Message",
    "MethodNotFound",
    "MissingClientCapability",
    "ParseError",
    "RequestId",
    "leading_request_id",
    "UnsupportedVersion",
    "UrlElicitationRequired",
    "error_response",
    "message_from",
    "parse_json",
    "parse_message",
    "result_response",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
URL_ELICITATION_REQUIRED = -32042
HEADER_MISMATCH = -32020
MISSING_CLIENT_CAPABILITY = -32021
UNSUPPORTED_PROTOCOL_VERSION = -32022
RATE_LIMITED = -32029  # implementation-defined (-32000 to -32099): the HTTP 429 of stream transports
BATCH_ANSWER_FULL = -32030  # implementation-defined: a 2025-03-26 batch item not answered, the batch's answer is full

RequestId = str | int


class JsonRpcError(Exception):
    """A protocol error that becomes a JSON-RPC ``error`` object."""

    code = INTERNAL_ERROR

    def __init__(self, message: str, data: Any = None, *, request_id: RequestId | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.request_id = request_id  # the id of the offending request, when it could be read

    def to_error(self) -> dict[str, Any]:
        """The ``error`` member of a response."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(JsonRpcError):
    """The body is not valid JSON."""

    code = PARSE_ERROR


class InvalidRequest(JsonRpcError):
    """The JSON is not a valid JSON-RPC 2.0 message."""

    code = INVALID_REQUEST


class MethodNotFound(JsonRpcError):
    """No such method."""

    code = METHOD_NOT_FOUND


class InvalidParams(JsonRpcError):
    """The method exists but its params are wrong."""

    code = INVALID_PARAMS


class InternalError(JsonRpcError):
    """The server failed; the client did nothing wrong."""

    code = INTERNAL_ERROR


class BatchAnswerFull(JsonRpcError):
    """A request of a 2025-03-26 batch left unanswered because the batch's answers reached their byte budget
    (``data.maxBatchResponseBytes``): not run, or its answer dropped. The client did nothing malformed; the request
    may be sent again on its own."""

    code = BATCH_ANSWER_FULL


class UrlElicitationRequired(JsonRpcError):
    """The request can go on only after the user completes out-of-band (URL mode) elicitations.

    ``data`` is ``{"elicitations": [{"mode": "url", "elicitationId": ..., "url": ..., "message": ...}]}``.
    """

    code = URL_ELICITATION_REQUIRED


class HeaderMismatch(JsonRpcError):
    """An HTTP header (MCP-Protocol-Version, Mcp-Method, Mcp-Name, Mcp-Param-*) disagrees with the body."""

    code = HEADER_MISMATCH


class MissingClientCapability(JsonRpcError):
    """The request needs a client capability the client did not declare."""

    code = MISSING_CLIENT_CAPABILITY


class RateLimited(JsonRpcError):
    """A client over its request budget on a stream transport; ``data.retryAfter`` says when to try again."""

    code = RATE_LIMITED


class UnsupportedVersion(JsonRpcError):
    """The request's protocol version is not one this server speaks."""

    code = UNSUPPORTED_PROTOCOL_VERSION


@dataclass(slots=True)
class Message:
    """One parsed JSON-RPC message from a client: a request, a notification or a response.

    Treated as read-only, but not frozen: one is built per request, and a frozen dataclass sets every field through
    ``object.__setattr__`` (nothing hashes a message or changes one).
    """

    method: str | None
    id: RequestId | None = None
    params: dict[str, Any] = field(default_factory=dict)
    is_response: bool = False
    payload: dict[str, Any] = field(default_factory=dict)  # the whole message as received

    @property
    def is_notification(self) -> bool:
        """A request without an id: it gets no response."""
        return self.method is not None and self.id is None


MAX_DEPTH = 64  # nesting of objects and arrays in one message
MAX_STRING = 1024 * 1024  # characters in one string or key


def _check_shape(value: Any) -> None:
    """Refuse a value nested deeper than MAX_DEPTH or holding a string longer than MAX_STRING (walked without
    recursion, so the check itself cannot be made to overflow)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
            if any(len(key) > MAX_STRING for key in item):
                raise InvalidRequest(f"Invalid Request: a key is longer than {MAX_STRING} characters")
        elif isinstance(item, list):
            children = item
        else:
            if isinstance(item, str) and len(item) > MAX_STRING:
                raise InvalidRequest(f"Invalid Request: a string is longer than {MAX_STRING} characters")
            continue
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"Invalid Request: the message nests deeper than {MAX_DEPTH} levels")
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif isinstance(child, str) and len(child) > MAX_STRING:
                raise InvalidRequest(f"Invalid Request: a string is longer than {MAX_STRING} characters")


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body.

    Raises:
        ParseError: the body is not JSON.
        InvalidRequest: it nests deeper than MAX_DEPTH levels or holds a string longer than MAX_STRING.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ParseError(f"Parse error: the body is not valid JSON ({exc})") from exc
    # Deeper than MAX_DEPTH needs more brackets than that, a longer string a longer body: most messages are
    # cleared by two counts in C without walking them.
    if len(body) > MAX_STRING or body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        _check_shape(value)
    return value


def parse_message(body: bytes) -> Message:
    """Parse one JSON-RPC 2.0 message from a request body.

    Raises:
        ParseError: the body is not JSON.
        InvalidRequest: the JSON is a batch, or not a JSON-RPC 2.0 message (the error's ``request_id`` holds
            the id when one could be read, so the reply can name it).
    """
    payload = parse_json(body)
    if isinstance(payload, list):
        raise InvalidRequest("Invalid Request: JSON-RPC batches are not supported; send one message per request")
    return message_from(payload)


def message_from(payload: Any) -> Message:
    """Validate one parsed JSON value as a JSON-RPC 2.0 message.

    Raises:
        InvalidRequest: it is not a JSON-RPC 2.0 message.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest("Invalid Request: a JSON-RPC message must be a JSON object")
    raw_id = payload.get("id")
    request_id = raw_id if isinstance(raw_id, RequestId) and not isinstance(raw_id, bool) else None
    if payload.get("jsonrpc") != "2.0":
        raise InvalidRequest('Invalid Request: "jsonrpc" must be exactly "2.0"', request_id=request_id)
    if request_id is None and raw_id is not None:  # (an id that is there but not usable)
        raise InvalidRequest('Invalid Request: "id" must be a string or an integer')
    if "method" not in payload:
        if ("result" in payload) != ("error" in payload) and request_id is not None:
            return Message(method=None, id=request_id, is_response=True, payload=payload)
        raise InvalidRequest('Invalid Request: "method" is missing', request_id=request_id)
    method = payload["method"]
    if not isinstance(method, str) or not method:
        raise InvalidRequest('Invalid Request: "method" must be a non-empty string', request_id=request_id)
    if raw_id is None and "id" in payload:
        raise InvalidRequest('Invalid Request: "id" must not be null')
    params = payload.get("params", {})
    if not isinstance(params, dict):
        raise InvalidRequest('Invalid Request: "params" must be an object', request_id=request_id)
    return Message(method, request_id, params, False, payload)  # (by position: keywords cost more, on every request)


def result_response(request_id: RequestId, result: dict[str, Any]) -> dict[str, Any]:
    """A success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: RequestId | None, error: JsonRpcError) -> dict[str, Any]:
    """An error response; ``id`` is null when the request's id could not be read."""
    return {"jsonrpc": "2.0", "id": request_id, "error": error.to_error()}


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


# The integers orjson reads as integers (and writes back): past them it reads a float, which no id can be.
_SMALLEST_ID, _LARGEST_ID = -(2**63), 2**64 - 1


def leading_request_id(data: bytes) -> RequestId | None:
    """The id of a message cut short (one over the size limit, of which only the start was read), when the message's
    own top-level ``id`` member comes before the cut; None when it does not, or the start is not a JSON object, or
    the id is not one a message can have (an integer past 64 bits: :func:`parse_json` reads a float). Members nested
    deeper (an ``id`` among the params) are never taken for it."""
    text = data.decode("utf-8", errors="ignore")
    decoder = json.JSONDecoder()
    at = _skip_space(text, 0)
    if not text.startswith("{", at):
        return None
    at += 1
    while True:
        at = _skip_space(text, at)
        try:
            key, at = decoder.raw_decode(text, at)
            at = _skip_space(text, at)
            if not text.startswith(":", at):
                return None
            value, at = decoder.raw_decode(text, _skip_space(text, at + 1))
        except ValueError:  # cut inside this member (the large params, usually): the id is not before the cut
            return None
        if not isinstance(key, str):
            return None
        if key == "id":
            if isinstance(value, int) and not isinstance(value, bool):  # one parse_json reads as an integer
                return value if _SMALLEST_ID <= value <= _LARGEST_ID else None
            return value if isinstance(value, str) else None
        at = _skip_space(text, at)
        if not text.startswith(",", at):
            return None
        at += 1
