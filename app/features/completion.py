"""completion/complete: values for prompt arguments and resource template variables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.features.prompts import Prompts
from app.features.resources import Resources
from app.jsonrpc import InvalidParams

__all__ = ["MAX_VALUES", "complete"]

MAX_VALUES = 100  # the specification's limit per response


def _matching(candidates: Sequence[str], prefix: str) -> dict[str, Any]:
    values = [value for value in candidates if value.startswith(prefix)]
    return {"values": values[:MAX_VALUES], "total": len(values), "hasMore": len(values) > MAX_VALUES}


def complete(params: Mapping[str, Any], prompts: Prompts, resources: Resources) -> dict[str, Any]:
    """The result of completion/complete.

    Raises:
        InvalidParams: the reference or argument is malformed or names nothing this server has.
    """
    ref, argument = params.get("ref"), params.get("argument")
    if not isinstance(ref, dict) or not isinstance(argument, dict) or not isinstance(argument.get("name"), str):
        raise InvalidParams('Invalid params: completion needs "ref" and "argument" with a name')
    name, value = argument["name"], argument.get("value", "")
    if not isinstance(value, str):
        raise InvalidParams('Invalid params: "argument.value" must be a string')
    if ref.get("type") == "ref/prompt":
        prompt = prompts.get_spec(str(ref.get("name")))
        if prompt is None:
            raise InvalidParams(f"Unknown prompt: {ref.get('name')!r}")
        spec = next((a for a in prompt.arguments if a.name == name), None)
        if spec is None:
            raise InvalidParams(f"Prompt {prompt.name!r} has no argument {name!r}")
        return {"completion": _matching(spec.completions, value)}
    if ref.get("type") == "ref/resource":
        uri = ref.get("uri")
        template = next((t for t in resources.templates if t.uri_template == uri), None)
        if template is None:
            raise InvalidParams(f"Unknown resource template: {uri!r}")
        if name not in template.variables:
            raise InvalidParams(f"Template {uri!r} has no variable {name!r}")
        return {"completion": _matching(template.completions.get(name, ()), value)}
    raise InvalidParams(f"Invalid params: unknown reference type {ref.get('type')!r}")
