"""A short smoke run of ``make bench``: the benchmark itself works (it measures nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", "--skip-sdk", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_short_benchmark_run_checks_every_answer_and_writes_json_and_a_chart(tmp_path: Path) -> None:
    result = bench(
        "--seconds", "0.5", "--runs", "1", "--concurrency", "1,4", "--sessions", "40", "--out", str(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["results"]) == {"erlmcp", "fastapi-ceiling"}
    assert "baseline" not in report
    for found in report["results"].values():
        assert [cell["concurrency"] for cell in found["load"]] == [1, 4]
        assert all(cell["requests"] > 0 and cell["errors"] == 0 for cell in found["load"])
        assert all("cpu_us_per_req" not in cell for cell in found["load"])
        assert found["cold_start_s"] > 0
    sessions = report["results"]["erlmcp"]["sessions"]
    assert sessions["sessions"] == 40
    assert sessions["initialize_per_s"] > 0
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_a_baseline_run_measures_the_refs_own_tree_beside_the_working_tree(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    paths = ["--baseline-cache", str(cache), "--out", str(out)]
    short = ["--seconds", "0.3", "--runs", "2", "--concurrency", "16", "--sessions", "0"]
    result = bench("--baseline", "HEAD", *paths, *short)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "bench.json").read_text())
    baseline = report["baseline"]
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert baseline["sha"] == sha
    assert baseline["tree"] == str(cache.resolve() / sha)
    assert baseline["app"] == str(cache.resolve() / sha / "app" / "__init__.py")
    assert baseline["current_app"] == str(ROOT / "app" / "__init__.py")
    assert set(report["results"]) == {"erlmcp", baseline["name"], "fastapi-ceiling"}
    for name in ("erlmcp", baseline["name"]):
        (cell,) = report["results"][name]["load"]
        assert cell["requests"] > 0
        assert cell["errors"] == 0
        assert cell["cpu_us_per_req"] > 0
    comparison = baseline["comparison"]
    assert comparison["rounds"] == 2
    assert len(comparison["req_per_s"]["round_ratios"]) == 2
    assert comparison["cpu_us_per_req"]["ratio"] > 0
    assert f"erlmcp / {baseline['name']}: tools/call at 16 clients" in result.stdout
    assert f"{baseline['name']} imports {baseline['app']}" in result.stdout
