"""What the server offers over MCP: tools, resources, prompts, completion."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.features.prompts import Prompts
from app.features.resources import Resources
from app.features.tools import Tools

__all__ = ["Features"]


@dataclass(frozen=True, slots=True)
class Features:
    """Everything one server offers."""

    tools: Tools
    resources: Resources = field(default_factory=lambda: Resources([], []))
    prompts: Prompts = field(default_factory=lambda: Prompts([]))
    instructions: str | None = None
    # Whether the offer can change while the server runs (then list_changed notifications are declared).
    dynamic: bool = False
