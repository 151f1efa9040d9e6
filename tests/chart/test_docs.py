"""The chart's documentation is generated from values.yaml and kept current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import yaml

from tests.conftest import ROOT


def test_the_chart_readme_values_table_is_current() -> None:
    result = subprocess.run([sys.executable, "scripts/chart_docs.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_every_value_is_documented_in_the_table() -> None:
    spec = importlib.util.spec_from_file_location("chart_docs", ROOT / "scripts" / "chart_docs.py")
    assert spec is not None
    assert spec.loader is not None
    chart_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chart_docs)
    documented = {key for key, _, _ in chart_docs.rows()}

    def leaves(node: object, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node and prefix not in documented:
            return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}.{key}".lstrip("."))]
        return [prefix]

    values = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    undocumented = [
        leaf for leaf in leaves(values) if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert undocumented == []
