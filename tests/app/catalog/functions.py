"""Functions catalogue tests name as python tools (``tests.app.catalog.functions:NAME``)."""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel

from app.features.tools import ToolError


class Forecast(BaseModel):
    city: str
    celsius: float


def greet(name: str, punctuation: str = "!") -> str:
    """Greets someone by name."""
    return f"Hello, {name}{punctuation}"


async def forecast(city: str, days: int = 1) -> Forecast:
    """A made-up forecast."""
    await asyncio.sleep(0)
    return Forecast(city=city, celsius=20.5 + days)


def thread_name() -> str:
    """The name of the thread the call runs on."""
    return threading.current_thread().name


def refuse(reason: str) -> str:
    """Always refuses, with the reason given."""
    raise ToolError(f"refused: {reason}")


def crash() -> str:
    """Fails with an exception the tool did not mean."""
    return str(1 / 0)


def whole_result() -> dict[str, object]:
    """Returns a whole MCP result."""
    return {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}


def untyped(anything, count: int):
    """Takes one argument of any JSON type."""
    return [anything, count]


def variadic(*args: int) -> int:
    """Cannot be called by keyword."""
    return sum(args)
