"""Dispatch one JSON-RPC request to the MCP method that answers it, under the rules of its revision."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from app.features import Features
from app.features.completion import complete
from app.features.resources import ResourceNotFound
from app.features.tasks import TASKS_EXTENSION, Task, TaskStore
from app.jsonrpc import (
    InternalError,
    InvalidParams,
    InvalidRequest,
    JsonRpcError,
    Message,
    MethodNotFound,
    MissingClientCapability,
    RequestId,
    error_response,
    result_response,
)
from app.observability import tracing
from app.protocol.context import LOG_LEVELS, RequestContext
from app.protocol.methods import (
    HANDSHAKE_METHODS,
    METHODS,
    STATELESS_METHODS,
    TASK_METHODS,
    Capability,
    Era,
    MethodSpec,
    capabilities_of,
    check_handlers,
)
from app.protocol.request_state import RequestStateError, RequestStateSealer, StateBinding
from app.protocol.revisions import STATELESS_REVISIONS, negotiate
from app.security.keys import allows_tool

log = structlog.get_logger(__name__)

_NEEDS_TASKS: dict[str, Any] = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}
# The most bytes of clientInfo, and of capabilities, a session keeps (in memory or Redis, as long as it lives).
# Real clients send a few hundred bytes; 32 KiB leaves room for a data-URI icon, and bounds what one key's session
# quota (100 sessions) can store at about 6.4 MiB.
MAX_CLIENT_FIELD_BYTES = 32 * 1024

__all__ = ["Called", "Dispatcher", "Handler", "Outcome"]


@dataclass(slots=True)  # not frozen: one per call, and a frozen dataclass sets each field through object.__setattr__
class Called:
    """A handler's result with its outcome label and the tool it called (tools/call); a plain result is "ok"."""

    result: dict[str, Any]
    status: str
    tool: str | None = None


# One per method of the method table (app/protocol/methods.py) that the dispatcher answers.
Handler = Callable[[Mapping[str, Any], RequestContext], Awaitable[dict[str, Any] | Called]]


@dataclass(slots=True)  # not frozen: one per request, and a frozen dataclass sets each field through object.__setattr__
class Outcome:
    """What dispatching produced: the response and labels for metrics and logs (made once; not changed after)."""

    response: dict[str, Any]
    method: str  # the method, or "(unknown)" so that metric labels stay bounded
    status: str  # ok, error (a JSON-RPC error), or the tool outcome for tools/call
    tool: str | None = None
    seconds: float = 0.0  # time from dispatch to answer

    def timed(self, seconds: float) -> Outcome:
        """This outcome, taking ``seconds`` (what :func:`dataclasses.replace` makes, without its field walk)."""
        return Outcome(self.response, self.method, self.status, self.tool, seconds)


class Dispatcher:
    """Answers the MCP requests of the handshake-era revisions (2024-11-05 to 2025-11-25) and of 2026-07-28.

    Which methods exist in which revision, and what they declare, comes from :mod:`app.protocol.methods`.

    Raises:
        MethodTableError: (at construction) the handlers do not cover exactly the methods of the table.
    """

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
            "initialize": self._initialize,
            "ping": self._ping,
            "server/discover": self._discover,
            "tools/list": self._tools_list,
            "tools/call": self._tools_call,
            "prompts/list": self._prompts_list,
            "prompts/get": self._prompts_get,
            "resources/list": self._resources_list,
            "resources/templates/list": self._templates_list,
            "resources/read": self._resources_read,
            "resources/subscribe": self._subscribe,
            "resources/unsubscribe": self._unsubscribe,
            "completion/complete": self._complete,
            "logging/setLevel": self._set_level,
            "tasks/get": self._tasks_get,
            "tasks/update": self._tasks_update,
            "tasks/cancel": self._tasks_cancel,
        }
        check_handlers(self._handlers)

    @property
    def capabilities(self) -> dict[str, Any]:
        """What this server declares at initialize: only what it implements and offers."""
        return self._capabilities(Era.HANDSHAKE)

    def _capabilities(self, era: Era) -> dict[str, Any]:
        """The capabilities of ``era``: each that has a method in ``era`` (the method table) and that the catalogue
        offers, in the table's capability order; the tasks extension goes under "extensions"."""
        declared: dict[str, Any] = {}
        for capability in capabilities_of(era):
            shown = self._offer(capability, era)
            if shown is None:
                continue
            if capability is Capability.TASKS:
                declared.setdefault("extensions", {})[TASKS_EXTENSION] = shown
            else:
                declared[capability.value] = shown
        return declared

    def _offer(self, capability: Capability, era: Era) -> dict[str, Any] | None:
        """What the catalogue offers of ``capability`` in ``era``, as declared; None when it offers nothing."""
        features = self._features
        changes = features.dynamic
        match capability:
            case Capability.TOOLS:
                return {"listChanged": changes}
            case Capability.LOGGING:
                return {}
            case Capability.RESOURCES:
                if features.resources.empty:
                    return None
                if era is Era.HANDSHAKE:  # resources/subscribe is always answered
                    return {"subscribe": True, "listChanged": changes}
                # 2026-07-28 subscribes through subscriptions/listen, which streams only when the offer can change.
                return {"listChanged": changes, "subscribe": changes}
            case Capability.PROMPTS:
                return None if features.prompts.empty else {"listChanged": changes}
            case Capability.COMPLETIONS:
                return {} if not features.prompts.empty or features.resources.templates else None
            case Capability.TASKS:
                return {} if features.tools.support_tasks else None

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
            size = len(orjson.dumps(params[key])) if key in params else 0
            if size > MAX_CLIENT_FIELD_BYTES:
                raise InvalidParams(
                    f'Invalid params: "{key}" is {size} bytes; a session keeps at most {MAX_CLIENT_FIELD_BYTES}',
                    data={"field": key, "maxBytes": MAX_CLIENT_FIELD_BYTES},
                )
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

    def mirrored(self, name: object) -> tuple[tuple[str, str], ...]:
        """The arguments a call of the tool ``name`` mirrors into Mcp-Param-* headers (:meth:`Tools.mirrored`)."""
        return self._features.tools.mirrored(name) if isinstance(name, str) else ()

    def discover_result(self) -> dict[str, Any]:
        """The result of server/discover (2026-07-28): versions, capabilities and server info, cacheable."""
        features = self._features
        result: dict[str, Any] = {
            "supportedVersions": list(STATELESS_REVISIONS),
            "capabilities": self._capabilities(Era.STATELESS),
            "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info},
        }
        if features.instructions:
            result["instructions"] = features.instructions
        return result

    def _stateless_spec(self, method: str) -> MethodSpec | None:
        """The record of ``method`` if this server answers it in 2026-07-28 (the tasks methods only when the
        catalogue supports tasks; subscriptions/listen never: the transport streams it)."""
        if method in STATELESS_METHODS:  # the table's sets, made once: no Era flags combined per request
            return METHODS[method]
        if method in TASK_METHODS and self._features.tools.support_tasks:
            return METHODS[method]
        return None

    def dispatch(self, message: Message, ctx: RequestContext) -> Coroutine[Any, Any, Outcome]:
        """Answer one handshake-era request; protocol errors become error responses, never exceptions. The answer
        is traced (:mod:`app.observability.tracing`) when tracing is on or the request carries a trace context.
        (What to await: an untraced request's answer itself, not a coroutine awaiting it.)"""
        started = time.perf_counter()
        answer = self._dispatch(message, ctx, started)
        return answer if tracing.quiet(message) else self._traced(answer, message, ctx, started)

    def dispatch_stateless(self, message: Message, ctx: RequestContext) -> Coroutine[Any, Any, Outcome]:
        """Answer one 2026-07-28 request: no handshake, results typed and cacheable, multi-round input. (What to
        await: an untraced request's answer itself, not a coroutine awaiting it.)"""
        started = time.perf_counter()
        answer = self._dispatch_stateless(message, ctx, started)
        return answer if tracing.quiet(message) else self._traced(answer, message, ctx, started)

    async def _traced(
        self, answer: Coroutine[Any, Any, Outcome], message: Message, ctx: RequestContext, started: float
    ) -> Outcome:
        """``answer`` (a request's outcome, timed from ``started``) in its span; the span's end counts too."""
        outcome = await tracing.traced(answer, message, ctx, self._features)
        return outcome.timed(time.perf_counter() - started)

    async def _dispatch(self, message: Message, ctx: RequestContext, started: float) -> Outcome:
        """The outcome of a handshake-era request, timed from ``started``."""
        method = message.method or ""
        assert message.id is not None
        known = method in HANDSHAKE_METHODS
        label = method if known else "(unknown)"
        try:
            if not known:
                raise _not_found(method)
            answer = await self._handlers[method](message.params, ctx)
            result, status, tool = _labelled(answer)
            if result.get("resultType") == "input_required":  # only 2026-07-28 clients can answer that
                raise InvalidRequest(f"{method} needs input only a 2026-07-28 client can give")
        except JsonRpcError as error:
            response, status, tool = error_response(message.id, error), "error", None
        except Exception:  # never a stack trace on the wire; the log has it
            log.exception("request failed", method=method)
            response, status, tool = _internal_error(message.id), "error", None
        else:
            response = result_response(message.id, result)
        return Outcome(response, label, status, tool, time.perf_counter() - started)

    async def _dispatch_stateless(self, message: Message, ctx: RequestContext, started: float) -> Outcome:
        """The outcome of a 2026-07-28 request, timed from ``started``."""
        method = message.method or ""
        assert message.id is not None
        spec = self._stateless_spec(method)
        label = method if spec is not None else "(unknown)"
        try:
            if spec is None:
                raise _not_found(method)
            params = message.params
            if spec.checks_input and ("inputResponses" in params or "requestState" in params):  # a later round
                self._open_input(spec, params, ctx)
            result, status, tool = _labelled(await self._handlers[method](params, ctx))
            if spec.checks_input and result.get("resultType") == "input_required":
                result = self._seal_input(spec, params, ctx, result)
        except ResourceNotFound as missing:  # 2026-07-28 reports an unknown resource as invalid params
            error = InvalidParams(missing.message, data=missing.data)
            response, status, tool = error_response(message.id, error), "error", None
        except JsonRpcError as error:
            response, status, tool = error_response(message.id, error), "error", None
        except Exception:
            log.exception("request failed", method=method)
            response, status, tool = _internal_error(message.id), "error", None
        else:
            result.setdefault("resultType", "complete")
            if spec.cache_scope is not None and result["resultType"] == "complete":
                result.setdefault("ttlMs", spec.ttl_ms)
                result.setdefault("cacheScope", spec.cache_scope)
            response = result_response(message.id, result)
        return Outcome(response, label, status, tool, time.perf_counter() - started)

    def _open_input(self, spec: MethodSpec, params: Mapping[str, Any], ctx: RequestContext) -> None:
        """Check a retried request's inputResponses and open its requestState (sealed to :func:`_binding`) into the
        context."""
        responses = params.get("inputResponses")
        if responses is not None and not isinstance(responses, dict):
            raise InvalidParams('Invalid params: "inputResponses" must be an object keyed by input request')
        state = params.get("requestState")
        if state is not None:
            if not spec.multi_round or not isinstance(state, str):
                raise InvalidParams('Invalid params: "requestState" must be the string the server returned')
            try:
                ctx.request_state = self._sealer.open(state, _binding(spec, params, ctx))
            except RequestStateError as exc:
                raise InvalidParams(str(exc)) from exc
        ctx.input_responses = responses

    def _seal_input(
        self, spec: MethodSpec, params: Mapping[str, Any], ctx: RequestContext, result: dict[str, Any]
    ) -> dict[str, Any]:
        """An InputRequiredResult with its requestState sealed to this request (:func:`_binding`)."""
        if not spec.multi_round:
            raise InternalError(f"Internal error: {spec.name} cannot ask the client for input")
        if "requestState" in result:
            binding = _binding(spec, params, ctx)
            result = {**result, "requestState": self._sealer.seal(str(result["requestState"]), binding)}
        return result

    @staticmethod
    def _declares_tasks(ctx: RequestContext) -> bool:
        """Whether this request (2026-07-28 capabilities come with each request) declared the tasks extension."""
        if not ctx.stateless:
            return False
        extensions = ctx.client_capabilities.get("extensions")
        return isinstance(extensions, dict) and TASKS_EXTENSION in extensions

    def _task(self, params: Mapping[str, Any], ctx: RequestContext) -> Task:
        """The task named by the params, if the caller (its principal) started it; another's is unknown."""
        if not self._declares_tasks(ctx):
            raise MissingClientCapability(f"method requires extension {TASKS_EXTENSION}", data=_NEEDS_TASKS)
        return self._tasks.get(params.get("taskId"), principal=ctx.principal)

    async def _initialize(self, params: Mapping[str, Any], _: RequestContext) -> dict[str, Any]:
        return self.initialize_result(params)

    async def _discover(self, _: Mapping[str, Any], __: RequestContext) -> dict[str, Any]:
        return self.discover_result()

    async def _tools_call(self, params: Mapping[str, Any], ctx: RequestContext) -> Called:
        name = params.get("name")
        tools = self._features.tools
        if ctx.stateless and isinstance(name, str):  # a tool that needs tasks, called without declaring them
            spec = tools.spec(name)
            needs_tasks = spec is not None and spec.task_support == "required"  # (the capabilities read only then)
            if needs_tasks and not self._declares_tasks(ctx) and allows_tool(ctx.scopes, name):
                raise MissingClientCapability(
                    f"client must declare extension {TASKS_EXTENSION} to call {name!r}", data=_NEEDS_TASKS
                )
        called = await tools.call(params, ctx)
        if called.background is not None:
            if self._declares_tasks(ctx):
                task = self._tasks.start(called.background.worker, principal=ctx.principal)
                # "content": [] keeps the reply a valid CallToolResult for clients that do not know tasks.
                return Called({"resultType": "task", **task.describe(detailed=False), "content": []}, "task", str(name))
            called = await tools.run_inline(str(name), called.background)
        return Called(called.result, called.outcome, str(name))

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

    async def _tasks_get(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        return self._task(params, ctx).describe(detailed=True)

    async def _tasks_update(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        task = self._task(params, ctx)
        responses = params.get("inputResponses")
        if not isinstance(responses, dict):
            raise InvalidParams('Invalid params: tasks/update needs "inputResponses" (an object)')
        task.deliver(responses)
        return {}

    async def _tasks_cancel(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        self._task(params, ctx).cancel()
        return {}


def _binding(spec: MethodSpec, params: Mapping[str, Any], ctx: RequestContext) -> StateBinding:
    """What a requestState of this request is sealed to: the method, the value of its own name field (the method
    table's, so that no other field can stand in for it), the caller's principal, and its session when it has one."""
    name = params.get(spec.name_field) if spec.name_field is not None else None
    session = ctx.session.id if ctx.session is not None else None
    return StateBinding(spec.name, name if isinstance(name, str) else "", ctx.principal, session)


def _labelled(answer: dict[str, Any] | Called) -> tuple[dict[str, Any], str, str | None]:
    """A handler's answer as its result, its outcome label, and the tool called (for tools/call)."""
    if isinstance(answer, Called):
        return answer.result, answer.status, answer.tool
    return answer, "ok", None


def _internal_error(request_id: RequestId) -> dict[str, Any]:
    """The answer to a request whose handler failed: never a stack trace on the wire; the log has it."""
    internal = InternalError("Internal error: the server failed to answer; its log has the details")
    return error_response(request_id, internal)


def _not_found(method: str) -> MethodNotFound:
    return MethodNotFound(f"Method not found: {method!r}", data={"method": method})
