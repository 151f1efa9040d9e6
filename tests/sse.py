"""Reading SSE bodies in tests: (event id, JSON message or None for a priming event) per event, and the lines of a
streamed body. A line ends only at CR LF, LF or CR, as the SSE specification says: ``str.splitlines()`` and
httpx's ``aiter_lines`` also end lines at U+0085, U+2028 and other characters a JSON string may hold raw."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson

_LINE_END = re.compile(r"\r\n|\r|\n")


def lines(text: str) -> list[str]:
    """The lines of an SSE text (the last one as it is, empty when the text ends with a line end)."""
    return _LINE_END.split(text)


async def aiter_lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The lines of a streamed SSE body, each once its line end came (a CR at a chunk's end waits for the next
    chunk: it may be the first half of a CR LF); then what is left after the last line end, if anything."""
    pending = ""
    async for chunk in chunks:
        pending += chunk
        held = pending.endswith("\r")
        parts = lines(pending[:-1] if held else pending)
        pending = parts.pop() + ("\r" if held else "")
        for line in parts:
            yield line
    if pending:
        parts = lines(pending)
        for line in parts if parts[-1] else parts[:-1]:
            yield line


def events(text: str) -> list[tuple[str | None, dict[str, Any] | None]]:
    found = []
    for block in text.split("\n\n"):
        found_lines = lines(block)
        event_id = next((line[4:] for line in found_lines if line.startswith("id: ")), None)
        data = "".join(line[5:].strip() for line in found_lines if line.startswith("data:"))
        if event_id or data:
            found.append((event_id, orjson.loads(data) if data else None))
    return found


def response_message(content_type: str, body: str) -> dict[str, Any]:
    """The JSON-RPC response of a POST, whether it came as a JSON body or as an event stream (where it is the
    message with an ``id`` after any notifications)."""
    if not content_type.startswith("text/event-stream"):
        message: dict[str, Any] = orjson.loads(body)
        return message
    return next(m for _, m in events(body) if m is not None and "id" in m)
