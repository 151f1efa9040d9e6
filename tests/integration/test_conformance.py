"""The official MCP conformance suite against the real server with the conformance profile."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, RunningServer, start_server

pytestmark = [pytest.mark.slow, pytest.mark.conformance]

CLI = ROOT / ".tools" / "conformance" / "dist" / "index.js"
NODE = ROOT / ".tools" / "bin" / "node22"


@pytest.fixture(scope="module")
def conformance_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not CLI.exists() or not NODE.exists():
        pytest.fail("the conformance suite is not installed: run scripts/install-conformance.sh (make setup does)")
    # The server's default limits, as a user runs it: one run of the suite makes 34 initialize requests from one
    # address, the module three runs (68 in a minute), well inside ERLMCP_INITIALIZE_PER_MINUTE's 600.
    server = start_server(tmp_path_factory.mktemp("conformance"), ["--no-auth", "--catalog", "conformance"])
    yield server
    server.stop()


def failures(out: Path) -> list[str]:
    """``scenario :: check: message`` for every failed check the suite wrote."""
    found = []
    for checks in sorted(out.glob("*/checks.json")):
        for check in json.loads(checks.read_text()):
            if check.get("status") == "FAILURE":
                found.append(f"{checks.parent.name} :: {check.get('id')}: {check.get('errorMessage', '')[:200]}")
    return found


def run_suite(server: RunningServer, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(NODE), str(CLI), "server", "--url", f"{server.url}/mcp", *args, "-o", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_every_scored_2025_11_25_scenario_passes(conformance_server: RunningServer, tmp_path: Path) -> None:
    result = run_suite(conformance_server, tmp_path, "--requirements", "2025-11-25")
    summary = result.stdout[result.stdout.find("=== SUMMARY ===") :]
    assert result.returncode == 0, summary + "\n" + "\n".join(failures(tmp_path))
    assert failures(tmp_path) == []
    assert len(list(tmp_path.glob("*/checks.json"))) >= 30  # the whole requirement set ran


def test_every_scored_2026_07_28_scenario_passes(conformance_server: RunningServer, tmp_path: Path) -> None:
    result = run_suite(conformance_server, tmp_path, "--requirements", "2026-07-28")
    summary = result.stdout[result.stdout.find("=== SUMMARY ===") :]
    assert result.returncode == 0, summary + "\n" + "\n".join(failures(tmp_path))
    assert failures(tmp_path) == []  # the unscored ones too: the tasks extension and the pending scenarios


def test_the_whole_suite_passes_with_no_expected_failures(conformance_server: RunningServer, tmp_path: Path) -> None:
    result = run_suite(conformance_server, tmp_path, "--suite", "all")
    summary = result.stdout[result.stdout.find("=== SUMMARY ===") :]
    assert result.returncode == 0, summary + "\n" + "\n".join(failures(tmp_path))
    assert failures(tmp_path) == []
    assert len(list(tmp_path.glob("*/checks.json"))) >= 60
