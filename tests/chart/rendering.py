"""The chart rendered by real Helm as release r1 in namespace ns1, parsed into its documents."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

__all__ = ["SCENARIOS", "refusal", "render", "values_of"]

SCENARIOS = sorted((ROOT / "chart" / "ci").glob("*-values.yaml"))


def _command(helm: str, sets: tuple[str, ...], values: Path | None) -> list[str]:
    command = [helm, "template", "r1", str(ROOT / "chart"), "--namespace", "ns1"]
    if values is not None:
        command += ["-f", str(values)]
    for value in sets:
        command += ["--set", value]
    return command


def render(helm: str, *sets: str, values: Path | None = None) -> list[dict[str, Any]]:
    """``helm template`` with each ``NAME=VALUE`` of ``sets`` as a ``--set`` (and ``values`` as ``-f``)."""
    result = subprocess.run(_command(helm, sets, values), capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def refusal(helm: str, *sets: str, values: Path | None = None) -> str:
    """What Helm says when the chart refuses these values (the test fails if it renders them)."""
    result = subprocess.run(_command(helm, sets, values), capture_output=True, text=True)
    assert result.returncode != 0, f"the chart rendered {sets} instead of refusing them"
    return result.stderr


def values_of(scenario: Path) -> dict[str, Any]:
    """chart/values.yaml with the scenario's values merged over it, as Helm merges them."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in over.items():
            both_maps = isinstance(value, dict) and isinstance(base.get(key), dict)
            merged[key] = merge(base[key], value) if both_maps else value
        return merged

    defaults = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load(scenario.read_text()) or {})
