"""Dispatch one JSON-RPC request to the MCP method that answers it, under the rules of its revision."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from app.features import Features
from app.features.completion import complete
from app.jsonrpc import (
    InternalError,
    InvalidParams,
    JsonRpcError,
    Message,
    MethodNotFound,
    error_response,
    result_response,
)
from app.protocol.context import LOG_LEVELS, RequestContext
from app.protocol.revisions import negotiate

log = structlog.get_logger(__name__)

__all__ = ["Dispatcher", "Outcome"]

Handler = Callable[[Mapping[str, Any], RequestContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What dispatching produced: the response and labels for metrics and logs."""

    response: dict[str, Any]
    method: str  # the method, or "(unknown)" so that metric labels stay bounded
    status: str  # ok, error (a JSON-RPC error), or the tool outcome for tools/call
    tool: str | None = None


class Dispatcher:
    """Answers the MCP requests of the handshake-era revisions (2024-11-05 to 2025-11-25)."""

    def __init__(self, *, features: Features, server_name: str, server_version: str) -> None:
        self._features = features
        self.server_info = {"name": server_name, "version": server_version}
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "tools/list": self._tools_list,
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
        }

    @property
    def capabilities(self) -> dict[str, Any]:
        """What this server declares at initialize: only what it implements and offers."""
        features = self._features
        changes = features.dynamic
        capabilities: dict[str, Any] = {"tools": {"listChanged": changes}, "logging": {}}
        if not features.resources.empty:
            capabilities["resources"] = {"subscribe": True, "listChanged": changes}
        if not features.prompts.empty:
            capabilities["prompts"] = {"listChanged": changes}
        if not features.prompts.empty or features.resources.templates:
            capabilities["completions"] = {}
        return capabilities

    def initialize_result(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The result of initialize: the negotiated revision, capabilities and server info.

        Raises:
            InvalidParams: the params lack protocolVersion or carry malformed client fields.
        """
        if "protocolVersion" not in params:
            raise InvalidParams('Invalid params: initialize needs "protocolVersion"')
        for key in ("capabilities", "clientInfo"):
            if key in params and not isinstance(params[key], dict):
                raise InvalidParams(f'Invalid params: "{key}" must be an object')
        result: dict[str, Any] = {
            "protocolVersion": negotiate(params["protocolVersion"]),
            "capabilities": self.capabilities,
            "serverInfo": self.server_info,
        }
        if self._features.instructions:
            result["instructions"] = self._features.instructions
        return result

    def knows(self, method: str) -> bool:
        """Whether ``method`` is a request this server answers."""
        return method in self._handlers or method in {"initialize", "tools/call"}

    async def dispatch(self, message: Message, ctx: RequestContext) -> Outcome:
        """Answer one request; protocol errors become error responses, never exceptions."""
        method = message.method or ""
        assert message.id is not None
        label = method if self.knows(method) else "(unknown)"
        try:
            if method == "initialize":
                return Outcome(result_response(message.id, self.initialize_result(message.params)), label, "ok")
            if method == "tools/call":
                name = message.params.get("name")
                called = await self._features.tools.call(message.params, ctx)
                return Outcome(result_response(message.id, called.result), label, called.outcome, str(name))
            handler = self._handlers.get(method)
            if handler is None:
                raise MethodNotFound(f"Method not found: {method!r}", data={"method": method})
            result = await handler(message.params, ctx)
        except JsonRpcError as error:
            return Outcome(error_response(message.id, error), label, "error")
        except Exception:  # never a stack trace on the wire; the log has it
            log.exception("request failed", method=method)
            internal = InternalError("Internal error: the server failed to answer; its log has the details")
            return Outcome(error_response(message.id, internal), label, "error")
        return Outcome(result_response(message.id, result), label, "ok")

    async def _ping(self, _: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {}

    async def _tools_list(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return self._features.tools.list(params)

    async def _resources_list(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return self._features.resources.list(params)

    async def _templates_list(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return self._features.resources.list_templates(params)

    async def _resources_read(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return await self._features.resources.read(params)

    async def _subscribe(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        uri = self._features.resources.subscribable(params)
        if ctx.session is not None:
            ctx.session.subscriptions.add(uri)
        return {}

    async def _unsubscribe(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        uri = self._features.resources.subscribable(params)
        if ctx.session is not None:
            ctx.session.subscriptions.discard(uri)
        return {}

    async def _prompts_list(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return self._features.prompts.list(params)

    async def _prompts_get(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return await self._features.prompts.get(params)

    async def _complete(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return complete(params, self._features.prompts, self._features.resources)

    async def _set_level(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise InvalidParams(f"Invalid params: unknown log level {level!r}", data={"levels": list(LOG_LEVELS)})
        if ctx.session is not None:
            ctx.session.log_level = str(level)
        return {}
