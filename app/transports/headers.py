"""The 2026-07-28 request headers (SEP-2243): they must agree with the body they travel with."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from app.jsonrpc import HeaderMismatch, Message
from app.protocol.methods import NAME_FIELDS
from app.protocol.stateless import META_VERSION

__all__ = ["check_headers", "decode_header"]

_NAME_FIELDS = dict(NAME_FIELDS)  # (a plain dict: the table's read-only view answers get through a method call)


def decode_header(value: str) -> str | None:
    """A header value: surrounding whitespace trimmed, ``=?base64?...?=`` decoded strictly (None if invalid)."""
    value = value.strip()
    if "=?base64?" not in value:  # most values (a test for a substring costs a fifth of a startswith call)
        return value
    if not (value.startswith("=?base64?") and value.endswith("?=")):
        return value
    encoded = value[len("=?base64?") : -len("?=")]
    try:
        raw = base64.b64decode(encoded, validate=True)
        if base64.b64encode(raw).decode() != encoded:  # only canonical, padded base64
            return None
        return raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _mismatch(message: Message, what: str) -> HeaderMismatch:
    return HeaderMismatch(f"Header mismatch: {what}", request_id=message.id)


def check_headers(
    message: Message, headers: Mapping[str, str], meta: Mapping[str, Any], mirrored: Sequence[tuple[str, str]]
) -> None:
    """Check MCP-Protocol-Version, Mcp-Method, Mcp-Name and Mcp-Param-* against the body.

    ``mirrored`` are the (property, header suffix) pairs of the called tool's input schema (tools/call) that it
    declares with ``x-mcp-header``: the client mirrors those arguments into ``Mcp-Param-{suffix}`` headers.

    Raises:
        HeaderMismatch: a header is missing or disagrees with the body.
    """
    version = headers.get("mcp-protocol-version")
    if version is None or version.strip() != meta[META_VERSION]:
        raise _mismatch(message, "MCP-Protocol-Version must equal _meta protocolVersion")
    method = headers.get("mcp-method")
    if method is None or method.strip() != message.method:
        raise _mismatch(message, f"Mcp-Method must be {message.method!r}")
    field = _NAME_FIELDS.get(message.method or "")
    if field is not None and field in message.params:
        name = headers.get("mcp-name")
        if name is None or decode_header(name) != message.params[field]:
            raise _mismatch(message, f"Mcp-Name must equal params.{field}")
    if mirrored:  # most tools mirror nothing
        _check_param_headers(message, headers, mirrored)


def _check_param_headers(message: Message, headers: Mapping[str, str], mirrored: Sequence[tuple[str, str]]) -> None:
    arguments = message.params.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for prop, suffix in mirrored:
        if prop not in arguments:
            continue
        header = headers.get(f"mcp-param-{suffix.lower()}")
        if header is None or decode_header(header) != str(arguments[prop]):
            raise _mismatch(message, f"Mcp-Param-{suffix} must equal arguments.{prop}")
