"""Built-in tool implementations that catalogue entries can name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.features.tools import ToolHandler, ToolResult, text_result
from app.protocol.context import RequestContext

__all__ = ["BUILTINS", "Builtin"]


@dataclass(frozen=True, slots=True)
class Builtin:
    """A tool implementation with the JSON Schema of its arguments."""

    input_schema: Mapping[str, Any]
    run: ToolHandler


async def _echo(arguments: Mapping[str, Any], _: RequestContext) -> ToolResult:
    return text_result(arguments["text"])


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
