"""Check results as a table for people and JUnit XML for CI systems."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckResult", "render_table", "write_junit"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's outcome."""

    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str
    seconds: float

    @property
    def failed(self) -> bool:
        """Whether the check failed (a skipped check did not)."""
        return self.status == "FAIL"


def render_table(results: Sequence[CheckResult], target: str) -> str:
    """A plain-text table, one check a line, and a closing count line."""
    width = max([len(r.name) for r in results] + [5])
    lines = [f"erlmcp verify: {target}", "", f"{'check'.ljust(width)}  result  time     detail"]
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {r.status}    {r.seconds * 1000:6.1f}ms {r.detail}")
    passed, failed = (sum(r.status == s for r in results) for s in ("PASS", "FAIL"))
    skipped = len(results) - passed - failed
    lines += ["", f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")]
    return "\n".join(lines)


def write_junit(results: Sequence[CheckResult], path: Path, suite: str = "erlmcp-verify") -> None:
    """Write JUnit XML: one testcase per check, failures with their detail."""
    failures = sum(r.failed for r in results)
    skipped = sum(r.status == "SKIP" for r in results)
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(failures))
    testsuite = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(testsuite, "testcase", classname=suite, name=r.name, time=f"{r.seconds:.3f}")
        if r.status == "SKIP":
            ET.SubElement(case, "skipped", message=r.detail[:200])
        elif r.failed:
            failure = ET.SubElement(case, "failure", message=r.detail[:200])
            failure.text = r.detail
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
