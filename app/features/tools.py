"""Tools: tools/list and tools/call, with argument validation, a deadline per call, and output checks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import structlog

from app.features.pagination import paginate
from app.features.schemas import MAX_PROBLEMS, SchemaCheck
from app.features.tasks import RunAsTask, TaskContext
from app.jsonrpc import InvalidParams, JsonRpcError
from app.protocol.context import ClientRequestError, RequestContext
from app.runtime.errors import ToolError
from app.security.keys import ALL_TOOLS, allows_tool

__all__ = ["ToolCallOutcome", "ToolError", "ToolHandler", "ToolResult", "ToolSpec", "Tools", "text_result"]

log = structlog.get_logger(__name__)

ToolResult = dict[str, Any]
# A handler answers with a result, or (tools that support tasks) with RunAsTask to finish in the background.
ToolHandler = Callable[[Mapping[str, Any], RequestContext], Awaitable["ToolResult | RunAsTask"]]


def text_result(text: str, *, is_error: bool = False) -> ToolResult:
    """A result holding one text block."""
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool: what tools/list says about it and the handler tools/call runs."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    handler: ToolHandler
    title: str | None = None
    output_schema: Mapping[str, Any] | None = None
    annotations: Mapping[str, Any] | None = None
    icons: Sequence[Mapping[str, Any]] | None = None
    # Tasks extension: "optional" or "required" when the tool can finish in the background; None: never.
    task_support: str | None = None
    # This tool's own deadline (the server's maximum caps it) and how many of its calls may run at once.
    timeout_seconds: float | None = None
    max_concurrency: int | None = None

    def describe(self) -> dict[str, Any]:
        """The tool as tools/list shows it."""
        described: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "inputSchema": dict(self.input_schema),
        }
        optional = {
            "title": self.title,
            "outputSchema": self.output_schema,
            "annotations": self.annotations,
            "icons": self.icons,
        }
        described.update({key: value for key, value in optional.items() if value is not None})
        if self.task_support is not None:
            described["execution"] = {"taskSupport": self.task_support}
        return described


@dataclass(slots=True)  # not frozen: one per call, and a frozen dataclass sets each field through object.__setattr__
class ToolCallOutcome:
    """A tool call's result and how it ended (``ok``, ``error``, ``invalid_arguments``, ``timeout``, ``task``).

    ``background`` is set when the tool asked to finish as a task; the caller decides whether it may.
    """

    result: ToolResult
    outcome: str
    background: RunAsTask | None = None


@dataclass(frozen=True, slots=True)
class _Tool:
    spec: ToolSpec
    arguments: SchemaCheck
    output: SchemaCheck | None
    timeout: float
    slots: asyncio.Semaphore | None  # the tool's concurrency limit; None: unlimited
    mirrored: tuple[tuple[str, str], ...]  # (property, header suffix): see Tools.mirrored


class Tools:
    """The tools one server offers."""

    def __init__(self, specs: Sequence[ToolSpec], *, timeout_seconds: float, page_size: int = 100) -> None:
        self._timeout = timeout_seconds
        self._page_size = page_size
        self._tools: dict[str, _Tool] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ToolSpec) -> None:
        """Offer one more tool (or replace the one of the same name)."""
        output = SchemaCheck(spec.output_schema) if spec.output_schema is not None else None
        timeout = min(spec.timeout_seconds or self._timeout, self._timeout)
        slots = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
        arguments = SchemaCheck(spec.input_schema)  # first: a schema that is not one is refused here
        self._tools[spec.name] = _Tool(spec, arguments, output, timeout, slots, _mirrored(spec.input_schema))

    def remove(self, name: str) -> bool:
        """Stop offering a tool; whether it was offered."""
        return self._tools.pop(name, None) is not None

    def spec(self, name: str) -> ToolSpec | None:
        """The tool called ``name``."""
        tool = self._tools.get(name)
        return tool.spec if tool else None

    @property
    def support_tasks(self) -> bool:
        """Whether any tool can finish as a task."""
        return any(tool.spec.task_support for tool in self._tools.values())

    async def run_inline(self, name: str, background: RunAsTask) -> ToolCallOutcome:
        """Finish a task-capable call in the request itself (for clients without the tasks extension)."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await background.worker(TaskContext(None))
        except TimeoutError:
            return ToolCallOutcome(
                text_result(f"Tool {name!r} timed out after {self._timeout:g} s", is_error=True), "timeout"
            )
        except (ToolError, ClientRequestError, RuntimeError) as exc:
            return ToolCallOutcome(text_result(str(exc), is_error=True), "error")
        return ToolCallOutcome(result, "error" if result.get("isError") else "ok")

    def mirrored(self, name: str) -> tuple[tuple[str, str], ...]:
        """The (property, header suffix) pairs of the arguments of the tool called ``name`` that its input schema
        declares with ``x-mcp-header`` (SEP-2243: a 2026-07-28 client mirrors them into ``Mcp-Param-{suffix}``
        headers), in schema order; none for most tools, and for a tool not offered. Found once, when it is added."""
        tool = self._tools.get(name)
        return tool.mirrored if tool else ()

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the tools offered, in catalogue order."""
        return tuple(self._tools)

    def list(self, params: Mapping[str, Any], scopes: frozenset[str] = ALL_TOOLS) -> dict[str, Any]:
        """The result of ``tools/list``: the tools ``scopes`` allow.

        Raises:
            InvalidParams: the cursor is not one this server gave out.
        """
        visible = [tool for tool in self._tools.values() if allows_tool(scopes, tool.spec.name)]
        page, next_cursor = paginate(visible, params.get("cursor"), self._page_size)
        result: dict[str, Any] = {"tools": [tool.spec.describe() for tool in page]}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return result

    async def call(self, params: Mapping[str, Any], ctx: RequestContext) -> ToolCallOutcome:
        """Run ``tools/call``.

        Wrong arguments, failures and timeouts are tool errors (``isError: true``), as the specification asks.

        Raises:
            InvalidParams: the params name no known tool or are malformed.
            JsonRpcError: the tool refused with a protocol error (such as a missing client capability).
        """
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidParams('Invalid params: "name" must be the name of a tool')
        tool = self._tools.get(name)
        if tool is None or not allows_tool(ctx.scopes, tool.spec.name):  # a tool out of scope does not exist
            raise InvalidParams(f"Unknown tool: {name!r}", data={"name": name})
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParams('Invalid params: "arguments" must be an object')
        problems = tool.arguments.problems(arguments)
        if problems:
            detail = "; ".join(f"{'/'.join(map(str, p.path)) or '(arguments)'}: {p.message}" for p in problems)
            if len(problems) >= MAX_PROBLEMS:
                detail += f" (the first {len(problems)} problems)"
            return ToolCallOutcome(
                text_result(f"Invalid arguments for tool {name!r}: {detail}", is_error=True), "invalid_arguments"
            )
        # The deadline counts from here (waiting for a free slot counts against it too), but it is armed only once
        # the call suspends: a timeout acts at an await, so a call that finishes in its first step has nothing to
        # time, and one that suspends goes on under the deadline, in this task, from where it stopped.
        deadline = asyncio.get_running_loop().time() + tool.timeout
        try:
            if tool.slots is None:
                steps = tool.spec.handler(arguments, ctx).__await__()
            else:
                steps = _in_slot(tool.slots, tool.spec.handler, arguments, ctx).__await__()
            try:
                suspended = steps.send(None)
            except StopIteration as finished:
                result = finished.value
            else:
                async with asyncio.timeout_at(deadline):
                    result = await _Resumed(steps, suspended)
        except TimeoutError:
            return ToolCallOutcome(
                text_result(f"Tool {name!r} timed out after {tool.timeout:g} s", is_error=True), "timeout"
            )
        except (ToolError, ClientRequestError) as exc:
            return ToolCallOutcome(text_result(str(exc), is_error=True), "error")
        except JsonRpcError:
            raise  # a protocol error the tool chose (e.g. a missing client capability) stays a protocol error
        except Exception:
            log.exception("tool failed", tool=name)
            return ToolCallOutcome(
                text_result(f"Tool {name!r} failed; the server log has the details", is_error=True), "error"
            )
        return self._checked(tool, result)

    def _checked(self, tool: _Tool, result: ToolResult | RunAsTask) -> ToolCallOutcome:
        if isinstance(result, RunAsTask):
            return ToolCallOutcome({}, "task", background=result)
        if result.get("resultType") == "input_required":
            return ToolCallOutcome(result, "input_required")
        if tool.output is not None and not result.get("isError"):
            structured = result.get("structuredContent")
            problems = tool.output.problems(structured) if structured is not None else None
            if problems is None or problems:
                log.error("tool output does not match its outputSchema", tool=tool.spec.name)
                return ToolCallOutcome(
                    text_result(
                        f"Tool {tool.spec.name!r} returned output that does not match its outputSchema", is_error=True
                    ),
                    "error",
                )
            if not result.get("content"):
                result = {**result, "content": [{"type": "text", "text": orjson.dumps(structured).decode()}]}
        return ToolCallOutcome(result, "error" if result.get("isError") else "ok")


def _mirrored(schema: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The (property, header suffix) pairs of the properties ``schema`` declares with an ``x-mcp-header`` string."""
    properties: Mapping[str, Any] = schema.get("properties") or {}
    return tuple(
        (prop, spec["x-mcp-header"])
        for prop, spec in properties.items()
        if isinstance(spec, dict) and isinstance(spec.get("x-mcp-header"), str)
    )


async def _in_slot(
    slots: asyncio.Semaphore, handler: ToolHandler, arguments: Mapping[str, Any], ctx: RequestContext
) -> ToolResult | RunAsTask:
    """The handler's answer, called once one of the tool's ``slots`` is free."""
    async with slots:
        return await handler(arguments, ctx)


class _Resumed:
    """A call that suspended in its first step, awaited on from there: what its task sends or throws in (a wake-up,
    the deadline's cancellation, the request's) goes on to it, and its result is the await's, as ``yield from``
    would have it."""

    __slots__ = ("_steps", "_suspended")

    def __init__(self, steps: Generator[Any, None, ToolResult | RunAsTask], suspended: Any) -> None:
        self._steps = steps
        self._suspended = suspended  # what its first step yielded to the task (a future, or None)

    def __await__(self) -> Generator[Any, None, ToolResult | RunAsTask]:
        steps, suspended = self._steps, self._suspended
        while True:
            thrown: BaseException | None = None
            try:
                yield suspended
            except GeneratorExit:
                steps.close()
                raise
            except BaseException as exc:  # a cancellation (the deadline's, the request's): the call's to handle
                thrown = exc
            try:  # outside the except clause, so that the call's own exceptions are not chained to the thrown one
                suspended = steps.send(None) if thrown is None else steps.throw(thrown)
            except StopIteration as finished:
                return cast("ToolResult | RunAsTask", finished.value)
