"""Built-in tool implementations that catalogue entries can name: ``echo``, a calculator set (``add``,
``subtract``, ``multiply``, ``divide``, ``power``, ``sqrt``) and ``system_info``."""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app import __version__
from app.features.tools import ToolError, ToolHandler, ToolResult, text_result
from app.protocol.context import RequestContext

__all__ = ["BUILTINS", "Builtin"]


@dataclass(frozen=True, slots=True)
class Builtin:
    """A tool implementation with the JSON Schemas of its arguments and (when structured) its result."""

    input_schema: Mapping[str, Any]
    run: ToolHandler
    output_schema: Mapping[str, Any] | None = None
    read_only: bool = True


def _numbers(*names: str, description: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {n: {"type": "number", "description": (description or {}).get(n, n)} for n in names},
        "required": list(names),
        "additionalProperties": False,
    }


_RESULT_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"result": {"type": "number"}},
    "required": ["result"],
    "additionalProperties": False,
}


def _number_result(value: float) -> ToolResult:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large to represent")
    shown = int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value
    return {"content": [{"type": "text", "text": str(shown)}], "structuredContent": {"result": shown}, "isError": False}


def _calculator(operation: Callable[..., float], *names: str) -> ToolHandler:
    async def run(arguments: Mapping[str, Any], _: RequestContext) -> ToolResult:
        try:
            return _number_result(operation(*(arguments[name] for name in names)))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large to represent") from None

    return run


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > 10_000:  # an integer power this large is megabytes of digits: refuse before computing
        raise OverflowError
    result = base**exponent
    if isinstance(result, complex):
        raise ToolError("a negative number has no real power of a fractional exponent")
    return float(result) if abs(result) > 2**53 else result


def _sqrt(x: float) -> float:
    if x < 0:
        raise ToolError("the square root of a negative number is not a real number")
    return math.sqrt(x)


async def _echo(arguments: Mapping[str, Any], _: RequestContext) -> ToolResult:
    return text_result(arguments["text"])


_STARTED = time.monotonic()


async def _system_info(_: Mapping[str, Any], __: RequestContext) -> ToolResult:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info = {
        "server": "erlmcp",
        "version": __version__,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(terse=True),
        "machine": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "uptimeSeconds": round(time.monotonic() - _STARTED, 3),
        "maxRssBytes": usage.ru_maxrss * 1024,  # Linux reports KiB
    }
    lines = "\n".join(f"{key}: {value}" for key, value in info.items())
    return {"content": [{"type": "text", "text": lines}], "structuredContent": info, "isError": False}


_SYSTEM_INFO_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "server": {"type": "string"},
        "version": {"type": "string"},
        "python": {"type": "string"},
        "implementation": {"type": "string"},
        "platform": {"type": "string"},
        "machine": {"type": "string"},
        "cpus": {"type": "integer"},
        "uptimeSeconds": {"type": "number"},
        "maxRssBytes": {"type": "integer"},
    },
    "required": ["server", "version", "python", "platform", "cpus", "uptimeSeconds"],
}

BUILTINS: Mapping[str, Builtin] = {
    "echo": Builtin(
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string", "description": "The text to send back."}},
            "required": ["text"],
            "additionalProperties": False,
        },
        run=_echo,
    ),
    "add": Builtin(_numbers("a", "b"), _calculator(lambda a, b: a + b, "a", "b"), _RESULT_SCHEMA),
    "subtract": Builtin(_numbers("a", "b"), _calculator(lambda a, b: a - b, "a", "b"), _RESULT_SCHEMA),
    "multiply": Builtin(_numbers("a", "b"), _calculator(lambda a, b: a * b, "a", "b"), _RESULT_SCHEMA),
    "divide": Builtin(
        _numbers("a", "b", description={"a": "dividend", "b": "divisor (not 0)"}),
        _calculator(lambda a, b: a / b, "a", "b"),
        _RESULT_SCHEMA,
    ),
    "power": Builtin(_numbers("base", "exponent"), _calculator(_power, "base", "exponent"), _RESULT_SCHEMA),
    "sqrt": Builtin(_numbers("x", description={"x": "a number at least 0"}), _calculator(_sqrt, "x"), _RESULT_SCHEMA),
    "system_info": Builtin(
        {"type": "object", "properties": {}, "additionalProperties": False}, _system_info, _SYSTEM_INFO_SCHEMA
    ),
}
