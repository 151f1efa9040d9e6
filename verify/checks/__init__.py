"""The named checks, in the order they run."""

from __future__ import annotations

from collections.abc import Callable

from verify.checks import health, mcp, metrics, security
from verify.client import WireClient

__all__ = ["ALL_CHECKS", "Check"]

Check = tuple[str, Callable[[WireClient], str]]

# Metrics run last: they check that the traffic of the earlier checks was counted.
ALL_CHECKS: tuple[Check, ...] = (*health.CHECKS, *security.CHECKS, *mcp.CHECKS, *metrics.CHECKS)
