"""Reading SSE bodies in tests: (event id, JSON message or None for a priming event) per event."""

from __future__ import annotations

from typing import Any

import orjson


def events(text: str) -> list[tuple[str | None, dict[str, Any] | None]]:
    found = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        event_id = next((line[4:] for line in lines if line.startswith("id: ")), None)
        data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
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
