"""The named checks, in the order they run; a check's group is the part of its name before the dot."""

from __future__ import annotations

from collections.abc import Callable

from verify.checks import health, mcp, metrics, security, tls, transports
from verify.client import WireClient

__all__ = ["ALL_CHECKS", "GROUPS", "Check"]

Check = tuple[str, Callable[[WireClient], str]]

# The counters are read first and last, so that the traffic in between shows; the 429 check runs at the very
# end because it uses up the client's initialize budget.
ALL_CHECKS: tuple[Check, ...] = (
    *health.CHECKS,
    *metrics.BASELINE,
    *tls.CHECKS,
    *security.CHECKS,
    *mcp.CHECKS,
    *transports.CHECKS,
    *metrics.CHECKS,
    *security.LIMIT_CHECKS,
)
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(name.split(".")[0] for name, _ in ALL_CHECKS))
