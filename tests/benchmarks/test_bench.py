"""A short smoke run of ``make bench``: the benchmark itself works (it measures nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_a_short_benchmark_run_checks_every_answer_and_writes_json_and_a_chart(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--skip-sdk", "--seconds", "0.5", "--runs", "1", "--concurrency", "1,4",
         "--sessions", "40", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["results"]) == {"erlmcp", "fastapi-ceiling"}
    for found in report["results"].values():
        assert [cell["concurrency"] for cell in found["load"]] == [1, 4]
        assert all(cell["requests"] > 0 and cell["errors"] == 0 for cell in found["load"])
        assert found["cold_start_s"] > 0
    sessions = report["results"]["erlmcp"]["sessions"]
    assert sessions["sessions"] == 40
    assert sessions["initialize_per_s"] > 0
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
