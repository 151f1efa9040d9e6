"""The 2026-07-28 request headers (SEP-2243): they must agree with the body they travel with."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from app.jsonrpc import HeaderMismatch, InvalidParams, Message, UnsupportedVersion
from app.protocol.context import Announce, RequestContext, Send
from app.protocol.revisions import STATELESS_REVISIONS

__all__ = [
    "META_CAPABILITIES",
    "META_LOG_LEVEL",
    "META_VERSION",
    "check_headers",
    "check_meta",
    "check_version",
    "decode_header",
    "stateless_context",
]

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
# The body field each method's Mcp-Name header mirrors.
_NAME_FIELDS = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "tasks/get": "taskId",
    "tasks/update": "taskId",
    "tasks/cancel": "taskId",
}


def decode_header(value: str) -> str | None:
    """A header value: surrounding whitespace trimmed, ``=?base64?...?=`` decoded strictly (None if invalid)."""
    value = value.strip()
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


def check_meta(message: Message) -> Mapping[str, Any]:
    """The request's ``_meta``, with the keys every 2026-07-28 request must carry.

    Raises:
        InvalidParams: ``_meta`` is missing, not an object, or lacks protocolVersion or clientCapabilities.
    """
    meta = message.params.get("_meta")
    if not isinstance(meta, dict):
        raise InvalidParams('Invalid params: a 2026-07-28 request needs "_meta" with its protocol version and '
                            "client capabilities", request_id=message.id)  # fmt: skip
    if not isinstance(meta.get(META_VERSION), str):
        raise InvalidParams(f'Invalid params: "_meta" needs "{META_VERSION}"', request_id=message.id)
    if not isinstance(meta.get(META_CAPABILITIES), dict):
        raise InvalidParams(f'Invalid params: "_meta" needs "{META_CAPABILITIES}" (an object)', request_id=message.id)
    return meta


def _mismatch(message: Message, what: str) -> HeaderMismatch:
    return HeaderMismatch(f"Header mismatch: {what}", request_id=message.id)


def check_headers(message: Message, headers: Mapping[str, str], meta: Mapping[str, Any], tool_schema: Any) -> None:
    """Check MCP-Protocol-Version, Mcp-Method, Mcp-Name and Mcp-Param-* against the body.

    ``tool_schema`` is the called tool's input schema (tools/call), whose ``x-mcp-header`` properties the client
    mirrors into ``Mcp-Param-{Name}`` headers.

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
    if isinstance(tool_schema, Mapping):
        _check_param_headers(message, headers, tool_schema)


def _check_param_headers(message: Message, headers: Mapping[str, str], schema: Mapping[str, Any]) -> None:
    arguments = message.params.get("arguments")
    arguments = arguments if isinstance(arguments, dict) else {}
    for prop, spec in (schema.get("properties") or {}).items():
        suffix = spec.get("x-mcp-header") if isinstance(spec, dict) else None
        if not isinstance(suffix, str) or prop not in arguments:
            continue
        header = headers.get(f"mcp-param-{suffix.lower()}")
        if header is None or decode_header(header) != str(arguments[prop]):
            raise _mismatch(message, f"Mcp-Param-{suffix} must equal arguments.{prop}")


def check_version(meta: Mapping[str, Any]) -> None:
    """Refuse a ``_meta`` protocol version this server does not speak.

    Raises:
        UnsupportedVersion: with the supported versions and the requested one in ``data``.
    """
    if meta[META_VERSION] not in STATELESS_REVISIONS:
        raise UnsupportedVersion(
            f"Unsupported protocol version {meta[META_VERSION]!r}",
            data={"supported": list(STATELESS_REVISIONS), "requested": meta[META_VERSION]},
        )


def stateless_context(
    message: Message,
    meta: Mapping[str, Any],
    *,
    send: Send | None,
    announce: Announce | None,
    scopes: frozenset[str],
) -> RequestContext:
    """The context of a 2026-07-28 request: capabilities and log level come with the request itself; ``scopes``
    are the caller's (no default: a transport that forgot them served a scoped key every tool)."""
    assert message.id is not None
    level = meta.get(META_LOG_LEVEL)
    return RequestContext(
        request_id=message.id,
        method=message.method or "",
        meta=meta,
        send=send,
        scopes=scopes,
        protocol_version=meta[META_VERSION],
        stateless=True,
        request_client_capabilities=meta[META_CAPABILITIES],
        request_log_level=level if isinstance(level, str) else None,
        announce=announce,
    )
