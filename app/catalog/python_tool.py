"""Catalogue tools of kind ``python``: a function ``module:function``, sync or async, run off the event loop.

The function gets the call's arguments as keyword arguments, as JSON values (already checked against the
input schema). Its input schema is the one declared, or one derived from its type hints with pydantic. What it
returns becomes the result: a string is text; a dict with ``content`` is a whole MCP result; anything else is
sent as JSON text, and as ``structuredContent`` when the tool declares an ``outputSchema``. Raising
:class:`~app.features.tools.ToolError` ends the call with that message for the model to read.

Isolation: ``thread`` runs a sync function in the catalogue's thread pool (never on the event loop) and an
async one on the loop; ``process`` sends each call to the worker-process pool, where a crash or a runaway
allocation costs that call only.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any, get_type_hints

import orjson
import structlog
from pydantic import ConfigDict, PydanticUserError, create_model
from pydantic_core import PydanticSerializationError, to_jsonable_python

from app.catalog.model import PythonToolEntry
from app.features.tools import ToolError, ToolHandler, ToolResult
from app.protocol.context import RequestContext
from app.runtime.pool import ToolFailed, WorkerError, WorkerPool

__all__ = ["import_function", "python_tool_handler", "schema_from_hints", "tool_result_of"]

log = structlog.get_logger(__name__)


def import_function(target: str) -> Callable[..., Any]:
    """The function ``module:function`` names.

    Raises:
        ValueError: the module cannot be imported, or has no such callable.
    """
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs arbitrary code: any failure is the target's fault
        raise ValueError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attribute, None)
    if function is None:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(function):
        raise ValueError(f"{target!r} is not callable")
    return function  # type: ignore[no-any-return]


def schema_from_hints(function: Callable[..., Any]) -> dict[str, Any]:
    """The JSON Schema of the function's keyword arguments, from its type hints (a parameter without a hint
    takes any JSON value; one with a default is optional).

    Raises:
        ValueError: the signature takes ``*args``/``**kwargs`` or positional-only parameters, or a hint has no
            JSON Schema.
    """
    signature = inspect.signature(function)
    try:
        hints = get_type_hints(function)
    except Exception as exc:
        raise ValueError(f"its type hints cannot be resolved: {exc}") from None
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise ValueError(f"parameter {parameter.name!r} cannot be given by name; declare an inputSchema instead")
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    try:
        model = create_model(
            f"{getattr(function, '__name__', 'tool')}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        schema: dict[str, Any] = model.model_json_schema()
    except (PydanticUserError, TypeError) as exc:
        raise ValueError(f"its type hints have no JSON Schema: {exc}") from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def tool_result_of(value: Any, *, structured: bool) -> ToolResult:
    """The MCP result for what a function returned.

    Raises:
        ToolError: the value is not JSON, or (``structured``) not an object.
    """
    if isinstance(value, dict) and isinstance(value.get("content"), list):
        return {"isError": False, **value}
    if isinstance(value, str):
        return {"content": [{"type": "text", "text": value}], "isError": False}
    if value is None:
        return {"content": [], "isError": False}
    try:
        plain = to_jsonable_python(value)
    except PydanticSerializationError as exc:
        raise ToolError(f"the tool returned a value that is not JSON: {exc}") from None
    result: ToolResult = {"content": [{"type": "text", "text": orjson.dumps(plain).decode()}], "isError": False}
    if structured:
        if not isinstance(plain, dict):
            raise ToolError(f"the tool declares an outputSchema but returned {type(plain).__name__}, not an object")
        result["structuredContent"] = plain
    return result


def python_tool_handler(
    entry: PythonToolEntry, function: Callable[..., Any], *, threads: Executor, pool: WorkerPool | None
) -> ToolHandler:
    """The tools/call handler of a python entry (``pool`` serves ``isolation: process``)."""
    structured = entry.output_schema is not None

    if entry.isolation == "process":
        if pool is None:
            raise ValueError("isolation: process needs the worker pool")
        target = entry.function

        async def in_worker(arguments: Mapping[str, Any], ctx: RequestContext) -> ToolResult:
            try:  # who calls bounds how many workers its cancellations may restart
                value = await pool.call(
                    target, arguments, principal=ctx.principal, timeout_seconds=entry.timeout_seconds, tool=entry.name
                )
            except ToolFailed as exc:
                if exc.kind == "exception":  # as in a thread: the details go to the log, not to the model
                    log.error("tool failed in its worker", tool=entry.name, error_type=exc.type, error=exc.message)
                    raise ToolError(f"Tool {entry.name!r} failed; the server log has the details") from None
                raise ToolError(str(exc)) from None  # the tool's own ToolError, or our sentence (import, not JSON)
            except WorkerError as exc:  # crashed, out of memory: our sentences
                raise ToolError(str(exc)) from None
            return tool_result_of(value, structured=structured)

        return in_worker

    if inspect.iscoroutinefunction(function):

        async def on_loop(arguments: Mapping[str, Any], _: RequestContext) -> ToolResult:
            return tool_result_of(await function(**arguments), structured=structured)

        return on_loop

    async def in_thread(arguments: Mapping[str, Any], _: RequestContext) -> ToolResult:
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(threads, lambda: function(**arguments))
        return tool_result_of(value, structured=structured)

    return in_thread
