"""Running the checks against a target and collecting their results."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx

from verify.checks import ALL_CHECKS, Check
from verify.client import CheckFailed, CheckSkipped, Target, WireClient
from verify.report import CheckResult

__all__ = ["run_checks"]


def run_checks(target: Target, checks: Sequence[Check] = ALL_CHECKS) -> list[CheckResult]:
    """Run every check in order; a check that fails, is skipped or cannot connect is recorded; the rest still run."""
    results: list[CheckResult] = []
    verify = target.tls_context()  # the system's CAs or the one given, and a client certificate if any
    with httpx.Client(timeout=target.timeout, follow_redirects=False, verify=verify) as http:
        client = WireClient(target, http)
        for name, check in checks:
            started = time.perf_counter()
            try:
                detail, status = check(client), "PASS"
            except CheckSkipped as exc:
                detail, status = str(exc), "SKIP"
            except CheckFailed as exc:
                detail, status = str(exc), "FAIL"
            except httpx.HTTPError as exc:
                detail, status = f"{type(exc).__name__}: {exc or 'no detail'}", "FAIL"
            except Exception as exc:  # a reply of a shape no check expected: the check failed, the run goes on
                detail, status = f"unexpected reply ({type(exc).__name__}: {exc})", "FAIL"
            results.append(CheckResult(name, status, detail, time.perf_counter() - started))
    return results
