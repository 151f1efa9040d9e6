"""Running the checks against a target and collecting their results."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from verify.checks import ALL_CHECKS, Check
from verify.client import CheckFailed, Target, WireClient
from verify.report import CheckResult

__all__ = ["run_checks"]


def run_checks(target: Target, checks: Sequence[Check] = ALL_CHECKS) -> list[CheckResult]:
    """Run every check in order; a check that fails or cannot connect is recorded, and the rest still run."""
    results: list[CheckResult] = []
    with httpx.Client(timeout=target.timeout, follow_redirects=False) as http:
        client = WireClient(target, http)
        for name, check in checks:
            started = time.perf_counter()
            try:
                detail, passed = check(client), True
            except CheckFailed as exc:
                detail, passed = str(exc), False
            except httpx.HTTPError as exc:
                detail, passed = f"{type(exc).__name__}: {exc or 'no detail'}", False
            results.append(CheckResult(name, passed, detail, time.perf_counter() - started))
    return results
