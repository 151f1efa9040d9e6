"""tools/list and tools/call over the catalogue, with argument validation and a deadline per call."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from jsonschema import Draft202012Validator

from app.catalog import Catalog, ToolEntry
from app.features.builtins import BUILTINS, Builtin, ToolResult
from app.jsonrpc import InvalidParams

__all__ = ["ToolCallOutcome", "Tools"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ToolCallOutcome:
    """A tool call's result and how it ended (``ok``, ``error``, ``invalid_arguments`` or ``timeout``)."""

    result: ToolResult
    outcome: str


def _error_result(text: str) -> ToolResult:
    return {"content": [{"type": "text", "text": text}], "isError": True}


@dataclass(frozen=True, slots=True)
class _Tool:
    entry: ToolEntry
    builtin: Builtin
    validator: Draft202012Validator

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "name": self.entry.name,
            "description": self.entry.description,
            "inputSchema": dict(self.builtin.input_schema),
        }
        if self.entry.title:
            described["title"] = self.entry.title
        return described


class Tools:
    """The tools of one catalogue."""

    def __init__(self, catalog: Catalog, timeout_seconds: float, builtins: Mapping[str, Builtin] = BUILTINS) -> None:
        self._timeout = timeout_seconds
        self._tools: dict[str, _Tool] = {}
        for entry in catalog.tools:
            builtin = builtins[entry.builtin]
            self._tools[entry.name] = _Tool(entry, builtin, Draft202012Validator(dict(builtin.input_schema)))

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the tools offered, in catalogue order."""
        return tuple(self._tools)

    def list(self) -> dict[str, Any]:
        """The result of ``tools/list``."""
        return {"tools": [tool.describe() for tool in self._tools.values()]}

    async def call(self, params: Mapping[str, Any]) -> ToolCallOutcome:
        """Run ``tools/call``.

        Wrong arguments, failures and timeouts are tool errors (``isError: true``), as the specification asks.

        Raises:
            InvalidParams: the params name no known tool or are malformed.
        """
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidParams('Invalid params: "name" must be the name of a tool')
        tool = self._tools.get(name)
        if tool is None:
            raise InvalidParams(f"Unknown tool: {name!r}", data={"name": name, "available": list(self._tools)})
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise InvalidParams('Invalid params: "arguments" must be an object')
        problems = sorted(tool.validator.iter_errors(arguments), key=lambda e: list(e.path))
        if problems:
            detail = "; ".join(f"{'/'.join(map(str, p.path)) or '(arguments)'}: {p.message}" for p in problems)
            return ToolCallOutcome(_error_result(f"Invalid arguments for tool {name!r}: {detail}"), "invalid_arguments")
        try:
            async with asyncio.timeout(self._timeout):
                result = await tool.builtin.run(arguments)
        except TimeoutError:
            return ToolCallOutcome(_error_result(f"Tool {name!r} timed out after {self._timeout:g} s"), "timeout")
        except Exception:
            log.exception("tool failed", tool=name)
            return ToolCallOutcome(_error_result(f"Tool {name!r} failed; the server log has the details"), "error")
        return ToolCallOutcome(result, "error" if result.get("isError") else "ok")
