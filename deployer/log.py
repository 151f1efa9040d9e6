"""The one progress log type of every deployer command: a callable given each line (the CLI writes them to stderr,
tests collect them)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Log"]

Log = Callable[[str], None]
