"""checkov (framework kubernetes) on every rendered scenario: no failed check beyond chart/.checkov.yaml's skips."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.rendering import SCENARIOS
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CHECKOV = ROOT / ".tools" / "bin" / "checkov"
# Scenarios that turn a protection off on purpose, and the one check that then has to be skipped.
SCENARIO_SKIPS = {"networkpolicy-off-values.yaml": ["CKV2_K8S_6"]}  # no NetworkPolicy: the point of the scenario


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_checkov_passes_on_every_scenario(helm: str, scenario: Path, tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed: run scripts/install-checkov.sh (make test does)")
    rendered = subprocess.run(
        [helm, "template", "r1", str(ROOT / "chart"), "--namespace", "ns1", "-f", str(scenario)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered.stdout)
    # A --skip-check on the command line replaces the config file's list, so pass the union.
    configured = yaml.safe_load((ROOT / "chart" / ".checkov.yaml").read_text())["skip-check"]
    extra = (
        ["--skip-check", ",".join([*configured, *SCENARIO_SKIPS[scenario.name]])]
        if scenario.name in SCENARIO_SKIPS
        else []
    )
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(ROOT / "chart" / ".checkov.yaml"), "-f", str(manifest), "--compact",
         "--quiet", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    summary = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", result.stdout)
    assert summary is not None, result.stdout + result.stderr  # checkov can end silently: insist on its summary
    passed, failed = map(int, summary.groups())
    assert failed == 0, result.stdout
    assert passed > 100
