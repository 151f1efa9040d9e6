"""Catalogue prompts: Jinja2 templates (sandboxed) over the declared arguments, compiled when first rendered (so
that a server whose prompts nobody asks for never loads Jinja2; a user catalogue's templates were checked when it
was loaded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.catalog.model import PromptEntry, template_environment
from app.features.prompts import PromptArgument, PromptSpec
from app.jsonrpc import InvalidParams
from app.protocol.context import RequestContext

if TYPE_CHECKING:
    from jinja2 import Template

__all__ = ["prompt_spec"]


def prompt_spec(entry: PromptEntry) -> PromptSpec:
    """The prompt of a catalogue entry: each message rendered with the arguments given (an optional argument not
    given is an empty string, so ``{% if topic %}`` works); completion offers each argument's ``values``."""
    compiled: list[tuple[str, Template]] = []
    declared = [argument.name for argument in entry.arguments]

    def messages() -> list[tuple[str, Template]]:
        if not compiled:
            environment = template_environment()
            compiled.extend((message.role, environment.from_string(message.text)) for message in entry.messages)
        return compiled

    async def render(arguments: Mapping[str, str], _: RequestContext) -> list[dict[str, Any]]:
        unknown = sorted(set(arguments) - set(declared))
        if unknown:
            raise InvalidParams(
                f"Prompt {entry.name!r} has no argument {unknown[0]!r} (it takes: {', '.join(declared) or 'none'})"
            )
        variables = {name: arguments.get(name, "") for name in declared}
        from jinja2 import TemplateError

        try:
            return [
                {"role": role, "content": {"type": "text", "text": template.render(**variables)}}
                for role, template in messages()
            ]
        except TemplateError as exc:
            raise InvalidParams(f"Prompt {entry.name!r} cannot be rendered: {exc}") from None

    arguments = tuple(
        PromptArgument(a.name, description=a.description, required=a.required, completions=tuple(a.values))
        for a in entry.arguments
    )
    return PromptSpec(entry.name, render, title=entry.title, description=entry.description, arguments=arguments)
