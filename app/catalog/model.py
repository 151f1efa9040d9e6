"""The catalogue file format."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BUILTIN_TOOLS", "Catalog", "ToolEntry"]

# Built-in tool implementations a catalogue entry may name (see app.features.builtins).
BUILTIN_TOOLS = ("echo",)


class ToolEntry(BaseModel):
    """One tool the server offers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tool names follow the 2025-11-25 rules (SEP-986): 1-128 characters of A-Z a-z 0-9 _ - .
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    title: str | None = None
    description: str = Field(min_length=1)
    builtin: Literal["echo"]


class Catalog(BaseModel):
    """Everything the server serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: tuple[ToolEntry, ...] = ()

    @field_validator("tools")
    @classmethod
    def _unique_names(cls, tools: tuple[ToolEntry, ...]) -> tuple[ToolEntry, ...]:
        seen: set[str] = set()
        for tool in tools:
            if tool.name in seen:
                raise ValueError(f"tool name {tool.name!r} appears more than once")
            seen.add(tool.name)
        return tools
