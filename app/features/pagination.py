"""Opaque pagination cursors for the list methods."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, TypeVar

from app.jsonrpc import InvalidParams

__all__ = ["paginate"]

T = TypeVar("T")
_PREFIX = "erlmcp:"


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{offset}".encode()).decode()


def _decode(cursor: Any, size: int) -> int:
    if not isinstance(cursor, str):
        raise InvalidParams("Invalid params: cursor must be a string from an earlier nextCursor")
    try:
        text = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidParams("Invalid params: unknown cursor") from exc
    value = text.removeprefix(_PREFIX)
    if not text.startswith(_PREFIX) or not value.isdigit() or int(value) > size:
        raise InvalidParams("Invalid params: unknown cursor")
    return int(value)


def paginate(items: Sequence[T], cursor: Any, page_size: int) -> tuple[Sequence[T], str | None]:
    """One page of ``items`` from ``cursor`` (None for the first page) and the next cursor, if any.

    Raises:
        InvalidParams: the cursor is not one this server gave out.
    """
    start = 0 if cursor is None else _decode(cursor, len(items))
    end = start + page_size
    return items[start:end], (_encode(end) if end < len(items) else None)
