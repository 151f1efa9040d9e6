"""Check results as a table for people and JUnit XML for CI systems."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckResult", "render_lines", "render_table", "summary", "write_json", "write_junit"]


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


def summary(results: Sequence[CheckResult]) -> str:
    """``N passed, M failed[, K skipped]``."""
    passed, failed = (sum(r.status == s for r in results) for s in ("PASS", "FAIL"))
    skipped = len(results) - passed - failed
    return f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else "")


def render_table(results: Sequence[CheckResult], target: str) -> str:
    """For a terminal: an aligned table, one check a row, and a closing count line."""
    width = max([len(r.name) for r in results] + [5])
    lines = [f"erlmcp verify: {target}", "", f"{'check'.ljust(width)}  result  time     detail"]
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {r.status}    {r.seconds * 1000:6.1f}ms {r.detail}")
    lines += ["", summary(results)]
    return "\n".join(lines)


def render_lines(results: Sequence[CheckResult], target: str) -> str:
    """For logs and pipes: one ``STATUS name: detail`` line a check (grep-able), and the count line."""
    lines = [f"erlmcp verify: {target}"]
    lines += [f"{r.status} {r.name} ({r.seconds * 1000:.1f} ms): {r.detail}" for r in results]
    lines.append(summary(results))
    return "\n".join(lines)


def write_json(results: Sequence[CheckResult], target: str, path: Path) -> None:
    """The results as JSON: the target, one object a check, and the counts."""
    document = {
        "target": target,
        "passed": sum(r.status == "PASS" for r in results),
        "failed": sum(r.failed for r in results),
        "skipped": sum(r.status == "SKIP" for r in results),
        "checks": [
            {
                "name": r.name,
                "group": r.name.split(".")[0],
                "status": r.status,
                "detail": r.detail,
                "seconds": round(r.seconds, 6),
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


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
