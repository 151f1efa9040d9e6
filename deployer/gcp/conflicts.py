"""Optimistic writes as every platform makes them: a write carries what it was planned from (an IAM policy's
etag, a Cloud Run service's ``resourceVersion``), and the API refuses it when the object changed since it was
read. Then the whole attempt is made again from a new read, a few times in all (:func:`again_on_conflict`):
someone else's change is kept, never overwritten."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["again_on_conflict"]

T = TypeVar("T")


def again_on_conflict(
    attempt: Callable[[], T],
    *,
    conflict: type[Exception] | tuple[type[Exception], ...],
    attempts: int,
    retrying: Callable[[Exception], None] = lambda _: None,
) -> T:
    """``attempt()`` (read, plan, write what was read with its version), made again while its write is refused as
    a ``conflict``, ``attempts`` times in all; ``retrying`` is told of each conflict before the next attempt. The
    last attempt's conflict is raised."""
    for left in range(attempts, 0, -1):
        try:
            return attempt()
        except conflict as exc:
            if left == 1:
                raise
            retrying(exc)
    raise AssertionError("unreachable")  # pragma: no cover (attempts < 1)
