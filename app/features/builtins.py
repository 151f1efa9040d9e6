"""Built-in tool implementations that catalogue entries can name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BUILTINS", "Builtin", "ToolResult"]

ToolResult = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Builtin:
    """A tool implementation with the JSON Schema of its arguments."""

    input_schema: Mapping[str, Any]
    run: Callable[[Mapping[str, Any]], Awaitable[ToolResult]]


async def _echo(arguments: Mapping[str, Any]) -> ToolResult:
    text = arguments["text"]
    return {"content": [{"type": "text", "text": text}], "isError": False}


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
}
