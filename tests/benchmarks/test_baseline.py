"""``python -m benchmarks --baseline REF``: the ref's tree is exported outside the repository and its erlmcp row
runs that tree's code with the current row's interpreter, argv and environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.baseline import baseline_spec, compare, comparison_table, export, imported_app
from benchmarks.run import erlmcp_spec, median_runs
from tests.conftest import ROOT


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_exporting_head_gives_a_runnable_tree_and_the_baseline_row_runs_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    baseline = export("HEAD", cache)
    sha = git("rev-parse", "HEAD")
    assert (baseline.sha, baseline.short, baseline.reused) == (sha, git("rev-parse", "--short", sha), False)
    assert baseline.tree == cache.resolve() / sha
    assert not baseline.tree.is_relative_to(ROOT)
    assert (baseline.tree / "app" / "__init__.py").read_text() == git("show", "HEAD:app/__init__.py") + "\n"
    assert (baseline.tree / "app" / "__main__.py").is_file()
    assert list((baseline.tree / "app" / "__pycache__").glob("__init__.*.pyc"))
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging directory left behind

    current = erlmcp_spec()
    spec = baseline_spec(current, baseline)
    assert spec.name == f"erlmcp@{baseline.short}"
    assert spec.command == current.command  # the same interpreter and flags
    assert spec.command[1:3] == ("-m", "app")
    assert spec.cwd == baseline.tree  # -m app puts the working directory first on sys.path
    assert spec.env["PYTHONPATH"].split(os.pathsep)[0] == str(baseline.tree)
    assert {k: v for k, v in spec.env.items() if k != "PYTHONPATH"} == current.env
    assert current.cwd == ROOT

    again = export("HEAD", cache)
    assert (again.tree, again.reused) == (baseline.tree, True)


def test_a_ref_that_is_not_a_commit_and_a_cache_inside_the_repository_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a commit"):
        export("no-such-ref-for-the-benchmark", tmp_path)
    with pytest.raises(ValueError, match="not a git ref"):
        export("--output=/tmp/x", tmp_path)
    with pytest.raises(ValueError, match="inside the repository"):
        export("HEAD", ROOT / ".bench" / "baselines")
    assert not (ROOT / ".bench" / "baselines").exists()


def run(*cells: tuple[int, float, float | None]) -> dict[str, object]:
    load = []
    for clients, rate, cpu in cells:
        cell: dict[str, object] = {"concurrency": clients, "requests": 1, "errors": 0, "req_per_s": rate}
        cell |= {"p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0}
        if cpu is not None:
            cell["cpu_us_per_req"] = cpu
        load.append(cell)
    return {"cold_start_s": 0.5, "load": load, "peak_rss_kib": 1}


def test_current_over_baseline_is_the_ratio_of_the_medians_with_the_rounds_spread() -> None:
    current = [run((1, 5.0, 90.0), (16, 10_000.0, 80.0)), run((1, 5.0, 90.0), (16, 9_700.0, 82.0))]
    current.append(run((1, 5.0, 90.0), (16, 10_300.0, 79.0)))
    baseline = [run((1, 5.0, 90.0), (16, 10_000.0, 80.0)), run((1, 5.0, 90.0), (16, 10_000.0, 80.0))]
    baseline.append(run((1, 5.0, 90.0), (16, 9_900.0, 81.0)))
    found = compare(current, baseline, 16)
    assert found["at_clients"] == 16
    assert found["rounds"] == 3
    assert found["req_per_s"]["current"] == 10_000.0
    assert found["req_per_s"]["baseline"] == 10_000.0
    assert found["req_per_s"]["ratio"] == 1.0
    assert found["req_per_s"]["round_ratios"] == [1.0, 0.97, round(10_300 / 9_900, 4)]
    assert found["req_per_s"]["spread"] == [0.97, round(10_300 / 9_900, 4)]
    assert found["cpu_us_per_req"]["ratio"] == 1.0
    table = comparison_table(found, "erlmcp", "erlmcp@abc1234")
    assert "erlmcp / erlmcp@abc1234" in table
    assert "req/s" in table
    assert "server CPU us/req" in table
    assert "0.970..1.040" in table
    assert "holds at 1.000" in table
    merged = median_runs(current)
    assert merged["load"][1]["cpu_us_per_req"] == 80.0
    assert merged["load"][1]["req_per_s"] == 10_000.0


def test_without_cpu_figures_the_comparison_has_only_the_rate_and_the_merge_adds_none() -> None:
    current = [run((16, 9_000.0, None))]
    baseline = [run((16, 10_000.0, None))]
    found = compare(current, baseline, 16)
    assert "cpu_us_per_req" not in found
    assert found["req_per_s"]["ratio"] == 0.9
    assert "FAILS at 0.900" in comparison_table(found, "erlmcp", "erlmcp@abc1234")
    assert "cpu_us_per_req" not in median_runs(current)["load"][0]


@pytest.mark.slow
def test_the_baseline_spec_imports_the_exported_app_and_the_current_spec_the_working_tree(tmp_path: Path) -> None:
    baseline = export("HEAD", tmp_path)
    assert imported_app(baseline_spec(erlmcp_spec(), baseline)) == baseline.tree / "app" / "__init__.py"
    assert imported_app(erlmcp_spec()) == ROOT / "app" / "__init__.py"
