"""Dispatch one JSON-RPC message to the MCP method that handles it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.features.tools import Tools
from app.jsonrpc import InvalidParams, JsonRpcError, Message, MethodNotFound, error_response, result_response
from app.protocol.revisions import negotiate

__all__ = ["Dispatcher", "Outcome"]

# Notifications a client may send; they are accepted and need no answer.
_KNOWN_NOTIFICATIONS = frozenset(
    {
        "notifications/initialized",
        "notifications/cancelled",
        "notifications/progress",
        "notifications/roots/list_changed",
    }
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What dispatching produced: the response (None for notifications) and labels for metrics and logs."""

    response: dict[str, Any] | None
    method: str
    status: str  # ok, error (a JSON-RPC error), or the tool outcome for tools/call
    tool: str | None = None


class Dispatcher:
    """Answers the MCP methods of the handshake revisions."""

    def __init__(self, *, tools: Tools, server_name: str, server_version: str) -> None:
        self._tools = tools
        self._server_info = {"name": server_name, "version": server_version}

    async def dispatch(self, message: Message) -> Outcome:
        """Handle one parsed message; protocol errors become error responses, never exceptions."""
        method = message.method or "(response)"
        if message.is_response or message.is_notification:
            known = message.is_response or method in _KNOWN_NOTIFICATIONS
            return Outcome(response=None, method=method if known else "(unknown notification)", status="ok")
        assert message.id is not None
        tool = None
        try:
            if method == "tools/call":
                tool = message.params.get("name") if isinstance(message.params.get("name"), str) else None
                called = await self._tools.call(message.params)
                return Outcome(result_response(message.id, called.result), method, called.outcome, tool)
            result = self._answer(method, message.params)
        except JsonRpcError as error:
            return Outcome(error_response(message.id, error), method if method in _METHODS else "(unknown)", "error")
        return Outcome(result_response(message.id, result), method, "ok", tool)

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "initialize":
            return self._initialize(params)
        if method == "ping":
            return {}
        if method == "tools/list":
            return self._tools.list()
        raise MethodNotFound(f"Method not found: {method!r}")

    def _initialize(self, params: dict[str, Any]) -> dict[str, Any]:
        if "protocolVersion" not in params:
            raise InvalidParams('Invalid params: initialize needs "protocolVersion"')
        return {
            "protocolVersion": negotiate(params["protocolVersion"]),
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": self._server_info,
        }


_METHODS = frozenset({"initialize", "ping", "tools/list", "tools/call"})
