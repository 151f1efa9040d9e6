"""Write the values table of chart/README.md from the ``# --`` comments of chart/values.yaml.

Usage: ``python scripts/chart_docs.py`` rewrites the table; ``--check`` exits 1 when the README is stale.
Every key documented with ``# --`` gets a row: its dotted path, its default, and the comment.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "chart" / "values.yaml"
README = ROOT / "chart" / "README.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][A-Za-z0-9_]*):")


def rows() -> list[tuple[str, str, str]]:
    defaults = yaml.safe_load(VALUES.read_text())
    found: list[tuple[str, str, str]] = []
    path: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in VALUES.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            comment = [stripped[4:].strip()]
            continue
        if stripped.startswith("#") and comment:
            comment.append(stripped[1:].strip())
            continue
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        path = [(i, k) for i, k in path if i < indent] + [(indent, match["key"])]
        if comment:
            dotted = ".".join(k for _, k in path)
            value = defaults
            for _, key in path:
                value = value[key]
            shown = (
                json.dumps(value)
                if not isinstance(value, dict | list) or len(json.dumps(value)) <= 40
                else "see values.yaml"
            )
            found.append((dotted, shown, " ".join(comment)))
        comment = []
    return found


def table() -> str:
    lines = ["| Key | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {text} |" for key, default, text in rows()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    text = README.read_text()
    before, _, rest = text.partition(START)
    _, _, after = rest.partition(END)
    updated = f"{before}{START}\n{table()}\n{END}{after}"
    if "--check" in argv:
        if updated != text:
            print("chart/README.md is stale: run python scripts/chart_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
