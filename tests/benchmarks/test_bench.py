"""A short smoke run of ``make bench``: the benchmark itself works (it measures nothing here), erlmcp runs as the
chart ships it, and every row has what issue 25 reads from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.acceptance import acceptance
from benchmarks.chart_rows import API_KEY, OVERRIDES, chart_spec, plan_chart
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CHART_ROWS = {"erlmcp-chart", "erlmcp-chart-noaccess", "erlmcp-chart-redis", "erlmcp-chart-stateless"}
ACCEPTANCE = {
    "chart_vs_sdk_best_at_16",
    "chart_vs_fastapi_at_16",
    "chart_p99_at_64_ms",
    "chart_server_cpu_us_per_call_at_16",
    "stateless_vs_sdk_stateless_at_16",
    "chart_redis_vs_sdk_best_at_16",
    "chart_cold_start_s",
    "chart_idle_rss_mib",
}


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", "--skip-sdk", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_short_run_measures_every_row_with_cpu_idle_memory_access_lines_and_the_acceptance_block(
    tmp_path: Path,
) -> None:
    result = bench(
        "--seconds", "0.3", "--warmup", "0.2", "--runs", "1", "--concurrency", "1,16", "--sessions", "40",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert set(report["results"]) == {*CHART_ROWS, "erlmcp-stripped", "fastapi-ceiling"}
    assert list(report["results"])[0] == "erlmcp-chart"
    assert "baseline" not in report
    for name, found in report["results"].items():
        assert [cell["concurrency"] for cell in found["load"]] == [1, 16], name
        for cell in found["load"]:
            assert cell["requests"] > 0, (name, cell)
            assert cell["errors"] == 0, (name, cell)
            assert cell["cpu_us_per_req"] > 0, (name, cell)  # every row, not only with a baseline
            assert cell["client_cpu_us_per_req"] > 0, (name, cell)
        assert found["cold_start_s"] > 0
        assert 0 < found["idle_rss_kib"] <= found["peak_rss_kib"]
        assert found["idle_pss_tree_kib"] > 0
    assert report["results"]["erlmcp-chart"]["processes"] >= 1
    assert report["results"]["erlmcp-chart-stateless"]["wire"] == "stateless"

    # The access line was on in the chart rows: one line per answered request, in every cell.
    for name in CHART_ROWS - {"erlmcp-chart-noaccess"}:
        found = report["results"][name]
        assert all(cell["access_lines"] == cell["answered"] > cell["requests"] for cell in found["load"]), name
        assert found["access_lines"]["ok"] is True
    noaccess = report["results"]["erlmcp-chart-noaccess"]["access_lines"]
    assert report["access_log_off_honoured"] is (noaccess["lines"] == 0)

    overrides = report["results"]["erlmcp-chart"]["overrides"]
    assert overrides["ERLMCP_RATE_LIMIT_PER_SECOND"]["bench"] == "0"
    assert overrides["ERLMCP_RATE_LIMIT_PER_SECOND"]["chart"] not in {None, "0"}  # the chart limits, the bench not
    assert "ERLMCP_ACCESS_LOG" not in overrides
    noaccess_row = report["results"]["erlmcp-chart-noaccess"]
    assert "ERLMCP_ACCESS_LOG" not in noaccess_row["overrides"]  # the chart's own value turns the line off
    assert noaccess_row["chart_values"]["accessLog"] is False
    assert report["results"]["erlmcp-chart-redis"]["chart_values"]["sessions.store"] == "redis"

    sessions = report["results"]["erlmcp-chart"]["sessions"]
    assert sessions["sessions"] == 40
    assert sessions["initialize_per_s"] > 0
    assert "sessions" not in report["results"]["erlmcp-chart-stateless"]

    items = report["acceptance"]
    assert set(items) == ACCEPTANCE
    for name, item in items.items():
        assert set(item) == {"measured", "op", "threshold", "unit", "pass"}, name
        assert item["op"] in {">=", "<="}
    assert items["chart_vs_sdk_best_at_16"] == {
        "measured": None,
        "op": ">=",
        "threshold": 6.0,
        "unit": "x",
        "pass": None,
    }  # fmt: skip  (no SDK row ran)
    assert items["chart_server_cpu_us_per_call_at_16"]["measured"] > 0
    assert isinstance(items["chart_server_cpu_us_per_call_at_16"]["pass"], bool)
    assert "acceptance (issue 25" in result.stdout
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_the_chart_row_runs_the_rendered_chart_environment_but_for_the_listed_overrides(tmp_path: Path) -> None:
    spec = chart_spec("erlmcp-chart", tmp_path)
    shipped = plan_chart({}, tmp_path).servers[0].env  # the same layout again: the same paths
    assert set(spec.overrides) == {o.name for o in OVERRIDES}
    assert {k: v for k, v in spec.env.items() if k not in spec.overrides} == {
        k: v for k, v in shipped.items() if k not in spec.overrides
    }
    assert {k: o["chart"] for k, o in spec.overrides.items()} == {k: shipped.get(k) for k in spec.overrides}
    assert not spec.inherit_env  # the container's environment whole, not the bench's
    assert (shipped["ERLMCP_LOG_LEVEL"], shipped["ERLMCP_LOG_FORMAT"]) == ("INFO", "json")
    assert API_KEY in Path(shipped["ERLMCP_API_KEY_FILE"]).read_text()
    assert spec.api_key == API_KEY
    assert spec.log
    assert spec.access_log is True


def test_an_acceptance_item_passes_or_fails_on_its_threshold_and_a_row_not_run_leaves_it_unmeasured() -> None:
    def row(rate16: float, p99_64: float = 5.0, cpu: float = 50.0) -> dict[str, object]:
        return {"load": [{"concurrency": 16, "req_per_s": rate16, "p99_ms": 1.0, "cpu_us_per_req": cpu},
                         {"concurrency": 64, "req_per_s": rate16, "p99_ms": p99_64}]}  # fmt: skip

    results = {
        "erlmcp-chart": {**row(12_000, p99_64=12.0), "cold_start_s": 0.4, "idle_rss_kib": 70 * 1024},
        "fastapi-ceiling": row(11_000),
        "python-sdk-2.3.0-json": row(2_000),
        "python-sdk-2.3.0-sse": row(1_500),
    }
    items = acceptance(results)
    assert items["chart_vs_sdk_best_at_16"] == {"measured": 6.0, "op": ">=", "threshold": 6.0, "unit": "x",
                                                "pass": True}  # fmt: skip
    assert items["chart_vs_fastapi_at_16"]["pass"] is True
    assert items["chart_p99_at_64_ms"] == {"measured": 12.0, "op": "<=", "threshold": 10.0, "unit": "ms",
                                           "pass": False}  # fmt: skip
    assert items["chart_server_cpu_us_per_call_at_16"]["pass"] is True
    assert items["chart_cold_start_s"]["pass"] is True
    assert items["chart_idle_rss_mib"] == {"measured": 70.0, "op": "<=", "threshold": 60.0, "unit": "MiB",
                                           "pass": False}  # fmt: skip
    assert items["stateless_vs_sdk_stateless_at_16"]["pass"] is None  # no stateless rows ran
    assert items["chart_redis_vs_sdk_best_at_16"]["measured"] is None


def test_a_baseline_run_measures_the_refs_own_tree_beside_the_working_tree(tmp_path: Path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    paths = ["--baseline-cache", str(cache), "--out", str(out)]
    short = ["--seconds", "0.3", "--runs", "2", "--concurrency", "16", "--sessions", "0"]
    result = bench("--baseline", "HEAD", "--rows", "erlmcp-chart,fastapi-ceiling", *paths, *short)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "bench.json").read_text())
    baseline = report["baseline"]
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert baseline["sha"] == sha
    assert baseline["tree"] == str(cache.resolve() / sha)
    assert baseline["app"] == str(cache.resolve() / sha / "app" / "__init__.py")
    assert baseline["current_app"] == str(ROOT / "app" / "__init__.py")
    assert set(report["results"]) == {"erlmcp-chart", baseline["name"], "fastapi-ceiling"}
    for name in ("erlmcp-chart", baseline["name"]):
        (cell,) = report["results"][name]["load"]
        assert cell["requests"] > 0
        assert cell["errors"] == 0
        assert cell["cpu_us_per_req"] > 0
        assert cell["access_lines"] == cell["answered"]  # the baseline runs the chart's environment too
    comparison = baseline["comparison"]
    assert comparison["rounds"] == 2
    assert len(comparison["req_per_s"]["round_ratios"]) == 2
    assert comparison["cpu_us_per_req"]["ratio"] > 0
    assert f"erlmcp-chart / {baseline['name']}: tools/call at 16 clients" in result.stdout
    assert f"{baseline['name']} imports {baseline['app']}" in result.stdout
