"""Issue 25's acceptance, read from one bench run: each item's measured value, its threshold and pass or fail.

An item whose rows did not run (``--skip-sdk``, no redis-server) is ``null``: not measured, neither passed nor
failed. A failing item never changes the bench's exit code: the bench is a measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CHART", "NOACCESS", "REDIS", "STATELESS", "acceptance", "acceptance_lines", "ratios", "sdk_rows"]

CHART = "erlmcp-chart"
NOACCESS = "erlmcp-chart-noaccess"
REDIS = "erlmcp-chart-redis"
STATELESS = "erlmcp-chart-stateless"
CEILING = "fastapi-ceiling"
AT = 16  # the client count the ratios are taken at
TAIL_AT = 64  # the client count of the p99 item

Results = Mapping[str, Mapping[str, Any]]


def _cell(results: Results, name: str, clients: int) -> Mapping[str, Any] | None:
    for cell in results.get(name, {}).get("load", []):
        if cell["concurrency"] == clients:
            return dict(cell)
    return None


def _value(results: Results, name: str, clients: int, key: str) -> float | None:
    cell = _cell(results, name, clients)
    return float(cell[key]) if cell is not None and key in cell else None


def sdk_rows(results: Results, *, stateless: bool | None = None) -> list[str]:
    """The official SDK's rows (only its stateless modes, or only the others, when ``stateless`` says so)."""
    names = [name for name in results if name.startswith("python-sdk")]
    if stateless is None:
        return names
    return [name for name in names if ("stateless" in name) == stateless]


def _best(results: Results, names: list[str]) -> tuple[str, float] | None:
    rates = [(name, rate) for name in names if (rate := _value(results, name, AT, "req_per_s"))]
    return max(rates, key=lambda found: found[1]) if rates else None


def _ratio(results: Results, ours: str, theirs: tuple[str, float] | None) -> float | None:
    rate = _value(results, ours, AT, "req_per_s")
    return round(rate / theirs[1], 2) if rate is not None and theirs else None


def ratios(results: Results) -> dict[str, Any]:
    """req/s at 16 clients: the chart row over the SDK's best mode and over FastAPI; the stateless row over the
    SDK's best stateless mode; the Redis row over the SDK's best mode (each with the row it was divided by)."""
    best = _best(results, sdk_rows(results))
    best_stateless = _best(results, sdk_rows(results, stateless=True))
    ceiling = _value(results, CEILING, AT, "req_per_s")
    found: dict[str, Any] = {
        "vs_python_sdk_best": _ratio(results, CHART, best),
        "python_sdk_best": best[0] if best else None,
        "vs_fastapi_ceiling": _ratio(results, CHART, (CEILING, ceiling) if ceiling else None),
        "stateless_vs_sdk_stateless": _ratio(results, STATELESS, best_stateless),
        "python_sdk_stateless_best": best_stateless[0] if best_stateless else None,
        "redis_vs_sdk_best": _ratio(results, REDIS, best),
        "vs_python_sdk_best_stateful": _ratio(results, CHART, _best(results, sdk_rows(results, stateless=False))),
        "stripped_vs_python_sdk_best": _ratio(results, "erlmcp-stripped", best),
    }
    return {key: value for key, value in found.items() if value is not None}


def _item(measured: float | None, op: str, threshold: float, unit: str) -> dict[str, Any]:
    passed = None if measured is None else (measured >= threshold if op == ">=" else measured <= threshold)
    return {"measured": measured, "op": op, "threshold": threshold, "unit": unit, "pass": passed}


def acceptance(results: Results) -> dict[str, dict[str, Any]]:
    """Issue 25's acceptance items, measured in this run."""
    found = ratios(results)
    idle = results.get(CHART, {}).get("idle_rss_kib")
    cold = results.get(CHART, {}).get("cold_start_s")
    return {
        "chart_vs_sdk_best_at_16": _item(found.get("vs_python_sdk_best"), ">=", 6.0, "x"),
        "chart_vs_fastapi_at_16": _item(found.get("vs_fastapi_ceiling"), ">=", 1.0, "x"),
        "chart_p99_at_64_ms": _item(_value(results, CHART, TAIL_AT, "p99_ms"), "<=", 10.0, "ms"),
        "chart_server_cpu_us_per_call_at_16": _item(_value(results, CHART, AT, "cpu_us_per_req"), "<=", 70.0, "us"),
        "stateless_vs_sdk_stateless_at_16": _item(found.get("stateless_vs_sdk_stateless"), ">=", 6.0, "x"),
        "chart_redis_vs_sdk_best_at_16": _item(found.get("redis_vs_sdk_best"), ">=", 4.0, "x"),
        "chart_cold_start_s": _item(float(cold) if cold is not None else None, "<=", 0.5, "s"),
        "chart_idle_rss_mib": _item(round(idle / 1024, 1) if idle else None, "<=", 60.0, "MiB"),
    }


def acceptance_lines(items: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The acceptance block as printed: PASS, FAIL or not measured, with the value and the threshold."""
    lines = ["acceptance (issue 25; a failure does not fail the bench, which is a measurement):"]
    for name, item in items.items():
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[item["pass"]]
        measured = "not measured" if item["measured"] is None else f"{item['measured']:g} {item['unit']}"
        lines.append(
            f"  {verdict}  {name:38} {measured:>16}   (needs {item['op']} {item['threshold']:g} {item['unit']})"
        )
    failed = [name for name, item in items.items() if item["pass"] is False]
    lines.append(f"  {len(failed)} of {len(items)} FAIL" + (f": {', '.join(failed)}" if failed else ""))
    return lines
