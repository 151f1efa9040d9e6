"""Dispatch one JSON-RPC request to the MCP method that answers it, under the rules of its revision."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from app.features import Features
from app.features.completion import complete
from app.features.resources import ResourceNotFound
from app.features.tasks import TASKS_EXTENSION, TaskStore
from app.jsonrpc import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    JsonRpcError,
    Message,
    MethodNotFound,
    MissingClientCapability,
    error_response,
    result_response,
)
from app.observability import tracing
from app.protocol.context import LOG_LEVELS, RequestContext
from app.protocol.request_state import RequestStateError, RequestStateSealer
from app.protocol.revisions import STATELESS_REVISIONS, negotiate
from app.security.keys import allows_tool

log = structlog.get_logger(__name__)

# 2026-07-28 drops the handshake, ping, logging/setLevel and resources/(un)subscribe, and adds server/discover.
_STATELESS_METHODS = frozenset(
    {"server/discover", "tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
     "prompts/list", "prompts/get", "completion/complete"}
)  # fmt: skip
_TASK_METHODS = frozenset({"tasks/get", "tasks/update", "tasks/cancel"})
_NEEDS_TASKS: dict[str, Any] = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
_MULTI_ROUND = frozenset({"tools/call", "prompts/get", "resources/read"})  # may answer InputRequiredResult
_CACHE_SCOPES = {
    "server/discover": "public",
    "tools/list": "public",
    "prompts/list": "public",
    "resources/list": "public",
    "resources/templates/list": "public",
    "resources/read": "private",
}
_CACHE_TTL_MS = {method: (0 if method == "resources/read" else 60_000) for method in _CACHE_SCOPES}

__all__ = ["Dispatcher", "Outcome"]

Handler = Callable[[Mapping[str, Any], RequestContext], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What dispatching produced: the response and labels for metrics and logs."""

    response: dict[str, Any]
    method: str  # the method, or "(unknown)" so that metric labels stay bounded
    status: str  # ok, error (a JSON-RPC error), or the tool outcome for tools/call
    tool: str | None = None
    seconds: float = 0.0  # time from dispatch to answer


class Dispatcher:
    """Answers the MCP requests of the handshake-era revisions (2024-11-05 to 2025-11-25)."""

    def __init__(
        self,
        *,
        features: Features,
        server_name: str,
        server_version: str,
        sealer: RequestStateSealer,
        tasks: TaskStore | None = None,
    ) -> None:
        self._features = features
        self._sealer = sealer
        self._tasks = tasks or TaskStore()
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

    @property
    def features(self) -> Features:
        """What this server offers now."""
        return self._features

    def replace_features(self, features: Features) -> None:
        """Serve ``features`` from the next request on (a reloaded catalogue); calls under way finish with the
        tools they started with."""
        self._features = features

    def close(self) -> None:
        """Cancel the tasks still running (the server is stopping)."""
        self._tasks.close()

    @property
    def announces_changes(self) -> bool:
        """Whether the offer can change, so that clients may listen for list changes."""
        return self._features.dynamic

    def tool_schema(self, name: object) -> Mapping[str, Any] | None:
        """The input schema of a tool, for checking the Mcp-Param-* headers of a call."""
        return self._features.tools.input_schema(name) if isinstance(name, str) else None

    def discover_result(self) -> dict[str, Any]:
        """The result of server/discover (2026-07-28): versions, capabilities and server info, cacheable."""
        features = self._features
        changes = features.dynamic
        capabilities: dict[str, Any] = {"tools": {"listChanged": changes}}
        if not features.resources.empty:
            capabilities["resources"] = {"listChanged": changes, "subscribe": changes}
        if not features.prompts.empty:
            capabilities["prompts"] = {"listChanged": changes}
        if not features.prompts.empty or features.resources.templates:
            capabilities["completions"] = {}
        if features.tools.support_tasks:
            capabilities["extensions"] = {TASKS_EXTENSION: {}}
        result: dict[str, Any] = {
            "supportedVersions": list(STATELESS_REVISIONS),
            "capabilities": capabilities,
            "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info},
        }
        if features.instructions:
            result["instructions"] = features.instructions
        return result

    def knows(self, method: str) -> bool:
        """Whether ``method`` is a request this server answers in the handshake era."""
        return method in self._handlers or method in {"initialize", "tools/call"}

    async def dispatch(self, message: Message, ctx: RequestContext) -> Outcome:
        """Answer one handshake-era request; protocol errors become error responses, never exceptions. The answer
        is traced (:mod:`app.observability.tracing`) when tracing is on or the request carries a trace context."""
        started = time.perf_counter()
        if tracing.quiet(message):
            outcome = await self._dispatch(message, ctx)
        else:
            outcome = await tracing.traced(self._dispatch(message, ctx), message, ctx, self._features)
        return replace(outcome, seconds=time.perf_counter() - started)

    async def dispatch_stateless(self, message: Message, ctx: RequestContext) -> Outcome:
        """Answer one 2026-07-28 request: no handshake, results typed and cacheable, multi-round input."""
        started = time.perf_counter()
        if tracing.quiet(message):
            outcome = await self._dispatch_stateless(message, ctx)
        else:
            outcome = await tracing.traced(self._dispatch_stateless(message, ctx), message, ctx, self._features)
        return replace(outcome, seconds=time.perf_counter() - started)

    async def _dispatch(self, message: Message, ctx: RequestContext) -> Outcome:
        method = message.method or ""
        assert message.id is not None
        label = method if self.knows(method) else "(unknown)"
        try:
            if method == "initialize":
                return Outcome(result_response(message.id, self.initialize_result(message.params)), label, "ok")
            result, status, tool = await self._invoke(method, message.params, ctx)
            if result.get("resultType") == "input_required":  # only 2026-07-28 clients can answer that
                raise InvalidRequest(f"{method} needs input only a 2026-07-28 client can give")
        except JsonRpcError as error:
            return Outcome(error_response(message.id, error), label, "error")
        except Exception:  # never a stack trace on the wire; the log has it
            log.exception("request failed", method=method)
            internal = InternalError("Internal error: the server failed to answer; its log has the details")
            return Outcome(error_response(message.id, internal), label, "error")
        return Outcome(result_response(message.id, result), label, status, tool)

    async def _dispatch_stateless(self, message: Message, ctx: RequestContext) -> Outcome:
        method = message.method or ""
        assert message.id is not None
        known = method in _STATELESS_METHODS or (method in _TASK_METHODS and self._features.tools.support_tasks)
        label = method if known else "(unknown)"
        try:
            if not known:
                raise MethodNotFound(f"Method not found: {method!r}", data={"method": method})
            if method == "server/discover":
                result, status, tool = self.discover_result(), "ok", None
            elif method in _TASK_METHODS:
                result, status, tool = self._task_method(method, message.params, ctx), "ok", None
            else:
                scope = self._open_input(method, message.params, ctx)
                result, status, tool = await self._invoke(method, message.params, ctx)
                if result.get("resultType") == "input_required":
                    result = self._seal_input(method, scope, result)
        except ResourceNotFound as missing:  # 2026-07-28 reports an unknown resource as invalid params
            error = InvalidParams(missing.message, data=missing.data)
            return Outcome(error_response(message.id, error), label, "error")
        except JsonRpcError as error:
            return Outcome(error_response(message.id, error), label, "error")
        except Exception:
            log.exception("request failed", method=method)
            internal = InternalError("Internal error: the server failed to answer; its log has the details")
            return Outcome(error_response(message.id, internal), label, "error")
        result.setdefault("resultType", "complete")
        if method in _CACHE_SCOPES and result["resultType"] == "complete":
            result.setdefault("ttlMs", _CACHE_TTL_MS[method])
            result.setdefault("cacheScope", _CACHE_SCOPES[method])
        return Outcome(result_response(message.id, result), label, status, tool)

    def _open_input(self, method: str, params: Mapping[str, Any], ctx: RequestContext) -> str:
        """Check a retried request's inputResponses and open its requestState into the context."""
        scope = f"{method}\x00{params.get('name') or params.get('uri') or ''}"
        responses = params.get("inputResponses")
        if responses is not None and not isinstance(responses, dict):
            raise InvalidParams('Invalid params: "inputResponses" must be an object keyed by input request')
        state = params.get("requestState")
        if state is not None:
            if method not in _MULTI_ROUND or not isinstance(state, str):
                raise InvalidParams('Invalid params: "requestState" must be the string the server returned')
            try:
                ctx.request_state = self._sealer.open(state, scope)
            except RequestStateError as exc:
                raise InvalidParams(str(exc)) from exc
        ctx.input_responses = responses
        return scope

    def _seal_input(self, method: str, scope: str, result: dict[str, Any]) -> dict[str, Any]:
        if method not in _MULTI_ROUND:
            raise InternalError(f"Internal error: {method} cannot ask the client for input")
        if "requestState" in result:
            result = {**result, "requestState": self._sealer.seal(str(result["requestState"]), scope)}
        return result

    @staticmethod
    def _declares_tasks(ctx: RequestContext) -> bool:
        """Whether this request (2026-07-28 capabilities come with each request) declared the tasks extension."""
        extensions = ctx.client_capabilities.get("extensions")
        return ctx.stateless and isinstance(extensions, dict) and TASKS_EXTENSION in extensions

    def _task_method(self, method: str, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        if not self._declares_tasks(ctx):
            raise MissingClientCapability(f"method requires extension {TASKS_EXTENSION}", data=_NEEDS_TASKS)
        task = self._tasks.get(params.get("taskId"))
        if method == "tasks/get":
            return task.describe(detailed=True)
        if method == "tasks/update":
            responses = params.get("inputResponses")
            if not isinstance(responses, dict):
                raise InvalidParams('Invalid params: tasks/update needs "inputResponses" (an object)')
            task.deliver(responses)
        else:
            task.cancel()
        return {}

    async def _invoke(
        self, method: str, params: Mapping[str, Any], ctx: RequestContext
    ) -> tuple[dict[str, Any], str, str | None]:
        """Run one method's handler: the result, its outcome label, and the tool called (for tools/call)."""
        if method == "tools/call":
            name = params.get("name")
            tools = self._features.tools
            spec = tools.spec(name) if isinstance(name, str) and allows_tool(ctx.scopes, name) else None
            tasks_declared = self._declares_tasks(ctx)
            if ctx.stateless and spec is not None and spec.task_support == "required" and not tasks_declared:
                raise MissingClientCapability(
                    f"client must declare extension {TASKS_EXTENSION} to call {name!r}", data=_NEEDS_TASKS
                )
            called = await tools.call(params, ctx)
            if called.background is not None:
                if tasks_declared:
                    task = self._tasks.start(called.background.worker)
                    # "content": [] keeps the reply a valid CallToolResult for clients that do not know tasks.
                    return {"resultType": "task", **task.describe(detailed=False), "content": []}, "task", str(name)
                called = await tools.run_inline(str(name), called.background)
            return called.result, called.outcome, str(name)
        handler = self._handlers.get(method)
        if handler is None:
            raise MethodNotFound(f"Method not found: {method!r}", data={"method": method})
        return await handler(params, ctx), "ok", None

    async def _ping(self, _: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return {}

    async def _tools_list(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._features.tools.list(params, ctx.scopes)

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

    async def _prompts_get(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return await self._features.prompts.get(params, ctx)

    async def _complete(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return complete(params, self._features.prompts, self._features.resources)

    async def _set_level(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            raise InvalidParams(f"Invalid params: unknown log level {level!r}", data={"levels": list(LOG_LEVELS)})
        if ctx.session is not None:
            ctx.session.log_level = str(level)
        return {}
