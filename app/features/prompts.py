"""Prompts: list and get with arguments."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.features.pagination import paginate
from app.jsonrpc import InvalidParams
from app.protocol.context import RequestContext

__all__ = ["PromptArgument", "PromptSpec", "Prompts"]

# A renderer returns the prompt's messages, or (2026-07-28) an InputRequiredResult asking the client for input.
Renderer = Callable[[Mapping[str, str], RequestContext], Awaitable[list[dict[str, Any]] | dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class PromptArgument:
    """One argument of a prompt, with the values completion may offer for it."""

    name: str
    description: str | None = None
    required: bool = False
    completions: Sequence[str] = ()

    def describe(self) -> dict[str, Any]:
        """The argument as prompts/list shows it."""
        described: dict[str, Any] = {"name": self.name, "required": self.required}
        if self.description:
            described["description"] = self.description
        return described


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """One prompt template."""

    name: str
    render: Renderer
    title: str | None = None
    description: str | None = None
    arguments: Sequence[PromptArgument] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """The prompt as prompts/list shows it."""
        described: dict[str, Any] = {"name": self.name}
        optional = {"title": self.title, "description": self.description}
        described.update({key: value for key, value in optional.items() if value is not None})
        if self.arguments:
            described["arguments"] = [argument.describe() for argument in self.arguments]
        return described


class Prompts:
    """The prompts one server offers."""

    def __init__(self, specs: Sequence[PromptSpec], *, page_size: int = 100) -> None:
        self._prompts = {p.name: p for p in specs}
        self._page_size = page_size

    @property
    def empty(self) -> bool:
        """Whether nothing is offered."""
        return not self._prompts

    def add(self, spec: PromptSpec) -> None:
        """Offer one more prompt (or replace the one of the same name)."""
        self._prompts[spec.name] = spec

    def remove(self, name: str) -> bool:
        """Stop offering a prompt; whether it was offered."""
        return self._prompts.pop(name, None) is not None

    def get_spec(self, name: str) -> PromptSpec | None:
        """The prompt called ``name``."""
        return self._prompts.get(name)

    def list(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The result of prompts/list."""
        page, next_cursor = paginate(list(self._prompts.values()), params.get("cursor"), self._page_size)
        result: dict[str, Any] = {"prompts": [p.describe() for p in page]}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return result

    async def get(self, params: Mapping[str, Any], ctx: RequestContext) -> dict[str, Any]:
        """The result of prompts/get.

        Raises:
            InvalidParams: unknown prompt, arguments not an object of strings, or a required argument missing.
        """
        name = params.get("name")
        prompt = self._prompts.get(name) if isinstance(name, str) else None
        if prompt is None:
            raise InvalidParams(f"Unknown prompt: {name!r}", data={"name": name})
        arguments = params.get("arguments") or {}
        if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
            raise InvalidParams('Invalid params: "arguments" must be an object of strings')
        missing = [a.name for a in prompt.arguments if a.required and a.name not in arguments]
        if missing:
            raise InvalidParams(f"Missing required arguments for prompt {name!r}: {', '.join(missing)}")
        rendered = await prompt.render(arguments, ctx)
        if isinstance(rendered, dict):
            return rendered  # an InputRequiredResult
        result: dict[str, Any] = {"messages": rendered}
        if prompt.description:
            result["description"] = prompt.description
        return result
