"""``python -m benchmarks``: the servers side by side, tools/call throughput and latency, CPU per request, sessions,
cold start and idle memory, and issue 25's acceptance.

The rows lead with erlmcp as the chart ships it (``erlmcp-chart``: the rendered chart's environment, API key on,
JSON logs at INFO with the access line; see benchmarks/chart_rows.py), the same with the access line off, with
Redis sessions and on the 2026-07-28 stateless wire; then ``erlmcp-stripped`` (no auth, WARNING logs), a bare
FastAPI route (the ceiling) and the official Python SDK in each of its modes.

With ``--baseline REF`` erlmcp as of git REF runs too (row ``erlmcp@SHA``, the chart row's environment), measured
in turn with the working tree's chart row at each client count of every run, and ``current / baseline`` at 16
clients is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks.acceptance import CHART, NOACCESS, acceptance, acceptance_lines, ratios
from benchmarks.baseline import (
    CACHE,
    baseline_spec,
    changed_app_files,
    check_runs_from,
    compare,
    comparison_table,
    export,
    imported_app,
)
from benchmarks.chart_rows import chart_rows, stripped_spec
from benchmarks.load import Connection, open_session, run, run_load
from benchmarks.servers_run import (
    ROOT,
    SDK_VERSION,
    ServerSpec,
    Started,
    access_lines,
    cpu_seconds,
    descendants,
    ensure_sdk_venv,
    rss_kib,
    start,
)

__all__ = ["main"]

ACCESS_WAIT_SECONDS = 10.0  # the longest the bench waits for the access lines of a load cell to be written


def erlmcp_spec() -> ServerSpec:
    """The ``erlmcp-stripped`` row."""
    return stripped_spec()


def ceiling_spec() -> ServerSpec:
    return ServerSpec(
        "fastapi-ceiling",
        (sys.executable, str(ROOT / "benchmarks/servers/fastapi_ceiling.py"), "{port}"),
        sessions=False,
    )


def sdk_specs(python: Path) -> list[ServerSpec]:
    """The SDK's rows: its two stateful modes, its stateless mode, and that app on the 2026-07-28 wire."""
    script = str(ROOT / "benchmarks/servers/sdk_server.py")
    stateful = [
        ServerSpec(f"python-sdk-{SDK_VERSION}-{mode}", (str(python), script, "{port}", mode))
        for mode in ("sse", "json")
    ]
    stateless = (str(python), script, "{port}", "stateless")
    return [
        *stateful,
        ServerSpec(f"python-sdk-{SDK_VERSION}-stateless", stateless, sessions=False),
        ServerSpec(f"python-sdk-{SDK_VERSION}-stateless-2026", stateless, wire="stateless", sessions=False),
    ]


async def sessions_mode(port: int, pid: int, count: int, key: str | None = None) -> dict[str, Any]:
    """Open ``count`` sessions (initialize/s, KiB each), delete them, open a second wave (memory freed?)."""

    async def wave() -> tuple[list[dict[str, str]], float]:
        opened: list[dict[str, str]] = []
        workers = 16

        async def worker(share: int) -> None:
            connection = Connection("127.0.0.1", port)
            await connection.connect()
            try:
                for _ in range(share):
                    opened.append(await open_session("127.0.0.1", port, "/mcp", connection, key=key))
            finally:
                await connection.close()

        began = time.perf_counter()
        await asyncio.gather(*(worker(count // workers + (i < count % workers)) for i in range(workers)))
        return opened, time.perf_counter() - began

    async def delete(sessions: list[dict[str, str]]) -> None:
        connection = Connection("127.0.0.1", port)
        await connection.connect()
        try:
            for headers in sessions:
                assert connection.writer is not None
                head = [
                    "DELETE /mcp HTTP/1.1",
                    f"Host: 127.0.0.1:{port}",
                    "Content-Length: 0",
                    *(f"{k}: {v}" for k, v in headers.items()),
                ]
                connection.writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
                await connection._response()
        finally:
            await connection.close()

    base = rss_kib(pid)
    first, seconds = await wave()
    after_first = rss_kib(pid)
    await delete(first)
    after_delete = rss_kib(pid)
    second, _ = await wave()
    after_second = rss_kib(pid)
    await delete(second)
    return {
        "sessions": count,
        "initialize_per_s": round(count / seconds, 1),
        "kib_per_session": round((after_first - base) / count, 2),
        "rss_kib": {"before": base, "first_wave": after_first, "deleted": after_delete, "second_wave": after_second},
        "second_wave_growth_kib": after_second - after_first,
    }


def _count_access_lines(server: Started, offset: int, answered: int, expected: bool) -> tuple[int, int]:
    """The access lines the server wrote for a load cell (after ``offset``), waiting up to
    :data:`ACCESS_WAIT_SECONDS` for ``answered`` of them when they are ``expected`` (lines may be written after the
    answer, or buffered); the count and the offset after them."""
    assert server.log_path is not None
    count, end = access_lines(server.log_path, offset)
    deadline = time.monotonic() + (ACCESS_WAIT_SECONDS if expected else 0.2)
    while count < answered and time.monotonic() < deadline:
        time.sleep(0.05)
        more, end = access_lines(server.log_path, end)
        count += more
    return count, end


def measure(
    specs: Sequence[ServerSpec],
    *,
    concurrency: Sequence[int],
    seconds: float,
    sessions: int,
    core: int | None,
    redis_core: int | None = None,
    warmup: float = 1.0,
) -> list[dict[str, Any]]:
    """Start the servers of ``specs``, then load each in turn at every client count (two servers: A B at 1 client,
    A B at 16, ...), so that whatever else the machine does hits them alike. One result per spec.

    Each load cell has the server's CPU microseconds per request (its process and its tool workers, from
    ``/proc``) and the load generator's own; a server that logs to a file has the access lines it wrote in the
    cell beside the responses the generator read (``answered``).
    """
    servers: list[Started] = []
    try:
        for spec in specs:
            servers.append(start(spec, core=core, redis_core=redis_core))
            if spec.from_tree:
                check_runs_from(servers[-1].process.pid, spec)  # a baseline: really its own tree
        loads: list[list[dict[str, Any]]] = [[] for _ in servers]
        offsets = [0 for _ in servers]
        for clients in concurrency:
            for index, (server, cells) in enumerate(zip(servers, loads, strict=True)):
                spec = server.spec
                clock = functools.partial(cpu_seconds, server.process.pid)
                load = run_load(
                    "127.0.0.1",
                    server.port,
                    "/mcp",
                    concurrency=clients,
                    seconds=seconds,
                    warmup=warmup,
                    cpu_clock=clock,
                    wire=spec.wire,
                    key=spec.api_key,
                )
                if server.log_path is not None and not cells:  # past the lines of the readiness probe
                    offsets[index] = server.log_path.stat().st_size
                result = run(load)
                cell = result.summary()
                if server.log_path is not None:
                    cell["access_lines"], offsets[index] = _count_access_lines(
                        server, offsets[index], result.answered, spec.access_log is not False
                    )
                cells.append(cell)
        results: list[dict[str, Any]] = []
        for server, cells in zip(servers, loads, strict=True):
            result_row: dict[str, Any] = {
                "cold_start_s": round(server.cold_start_s, 3),
                "idle_rss_kib": server.idle_rss_kib,
                "idle_pss_tree_kib": server.idle_pss_tree_kib,
                "processes": len(descendants(server.process.pid)),
                "load": cells,
                "peak_rss_kib": rss_kib(server.process.pid, "VmHWM"),
            }
            if sessions and server.spec.sessions:
                result_row["sessions"] = run(
                    sessions_mode(server.port, server.process.pid, sessions, server.spec.api_key)
                )
            results.append(result_row)
        return results
    finally:
        for server in servers:
            server.stop()


def access_check(spec: ServerSpec, runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For a row that logs: whether every answered request had its access line (``access_log`` on), or none did
    (off), in every cell of every run."""
    if spec.access_log is None:
        return None
    pairs = [(cell["access_lines"], cell["answered"]) for found in runs for cell in found["load"]]
    lines, answered = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    if spec.access_log:
        return {"expected": "one per answered request", "lines": lines, "answered": answered,
                "ok": all(a == b for a, b in pairs)}  # fmt: skip
    return {"expected": "none (access line off)", "lines": lines, "answered": answered, "ok": lines == 0}


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each load figure across runs (the other figures from the last run)."""
    merged = dict(runs[-1])
    merged["load"] = []
    for position, last in enumerate(runs[-1]["load"]):
        cell = dict(last)
        for key in ("req_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req", "client_cpu_us_per_req"):
            if all(key in run["load"][position] for run in runs):
                cell[key] = statistics.median(run["load"][position][key] for run in runs)
        for key in ("errors", "answered", "access_lines"):
            if all(key in run["load"][position] for run in runs):
                cell[key] = sum(run["load"][position][key] for run in runs)
        merged["load"].append(cell)
    merged["cold_start_s"] = statistics.median(run["cold_start_s"] for run in runs)
    for key in ("idle_rss_kib", "idle_pss_tree_kib"):
        if all(key in run for run in runs):
            merged[key] = int(statistics.median(run[key] for run in runs))
    return merged


def chart(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    levels = [cell["concurrency"] for cell in results[names[0]]["load"]]
    figure, (rates, tails) = plt.subplots(1, 2, figsize=(14, 5))
    width = 0.8 / len(names)
    palette = plt.get_cmap("tab20")  # 20 distinct colours: the default cycle repeats after 10 rows
    for index, name in enumerate(names):
        cells = results[name]["load"]
        xs = [i + index * width for i in range(len(levels))]
        colour = palette(index % 20)
        rates.bar(xs, [c["req_per_s"] for c in cells], width, label=name, color=colour)
        tails.bar(xs, [c["p99_ms"] for c in cells], width, label=name, color=colour)
    for axis, label in ((rates, "tools/call per second"), (tails, "p99 latency (ms)")):
        axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(levels))])
        axis.set_xticklabels([f"{c} clients" for c in levels])
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    rates.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(results: dict[str, dict[str, Any]], at: int) -> list[str]:
    """The summary table: one line per row, req/s at each client count, p99 at the most, CPU at ``at`` clients."""
    levels = [cell["concurrency"] for cell in next(iter(results.values()))["load"]]
    top = max(levels)
    head = "".join(f"{f'req/s @{c}':>11}" for c in levels)
    lines = [
        f"{'row':34}{head}{f'p99@{top} ms':>12}{f'srv us@{at}':>11}{f'cli us@{at}':>11}"
        f"{'cold s':>8}{'idle MiB':>9}{'tree MiB':>9}{'peak MiB':>9}  access lines"
    ]
    for name, found in results.items():
        cells = {cell["concurrency"]: cell for cell in found["load"]}
        rates = "".join(f"{cells[c]['req_per_s']:>11,.0f}" for c in levels)
        mid = cells.get(at, cells[top])
        access = found.get("access_lines")
        shown = "" if access is None else f"{access['lines']}/{access['answered']} {'ok' if access['ok'] else 'WRONG'}"
        lines.append(
            f"{name:34}{rates}{cells[top]['p99_ms']:>12.2f}{mid.get('cpu_us_per_req', float('nan')):>11.1f}"
            f"{mid.get('client_cpu_us_per_req', float('nan')):>11.1f}{found['cold_start_s']:>8.3f}"
            f"{found.get('idle_rss_kib', 0) / 1024:>9.1f}{found.get('idle_pss_tree_kib', 0) / 1024:>9.1f}"
            f"{found['peak_rss_kib'] / 1024:>9.1f}  {shown}"
        )
    return lines


def _wanted(names: str | None, specs: list[ServerSpec]) -> list[ServerSpec]:
    if names is None:
        return specs
    chosen = set(names.split(","))
    return [spec for spec in specs if spec.name in chosen]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each cell (default 1)")
    parser.add_argument("--runs", type=int, default=3, help="runs per server; medians are reported (default 3)")
    parser.add_argument("--concurrency", default="1,16,64", help="client counts (default 1,16,64)")
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions per wave in sessions mode (0: skip)")
    parser.add_argument("--skip-sdk", action="store_true", help="do not install or run the official SDK server")
    parser.add_argument("--rows", help="only these rows (comma-separated names; default every row)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="folder for JSON and PNG")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run erlmcp as of git REF (row erlmcp@SHA, with the erlmcp-chart row's environment; its tree "
        "exported once into --baseline-cache), measured in turn with the working tree's erlmcp-chart in every run; "
        "prints current / baseline at 16 clients",
    )
    parser.add_argument(
        "--baseline-cache", type=Path, default=CACHE, help=f"where --baseline trees are exported (default {CACHE})"
    )
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.baseline is not None and 16 not in concurrency:
        parser.error("--baseline compares tools/call at 16 clients: --concurrency must include 16")
    if args.baseline is not None and args.rows is not None and CHART not in args.rows.split(","):
        parser.error(f"--baseline runs beside {CHART}: --rows must include it")
    cores = os.cpu_count() or 1
    server_core = 0 if cores > 1 else None
    load_core = 1 if cores > 1 else None
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})  # the load generator (and Redis) on core 1, the servers on core 0
    folder = Path(tempfile.mkdtemp(prefix="erlmcp-bench-chart-"))
    try:
        return _bench(args, parser, concurrency, folder, cores, server_core, load_core)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _bench(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    concurrency: list[int],
    folder: Path,
    cores: int,
    server_core: int | None,
    load_core: int | None,
) -> int:
    rows = chart_rows(folder)
    chart_row, noaccess, *others = rows
    # The servers of a group run together and are loaded in turn, cell by cell: the chart row with the access
    # line on and off (and a baseline) are measured side by side.
    groups = [_wanted(args.rows, [chart_row, noaccess])]
    provenance: dict[str, Any] = {}
    if args.baseline is not None:
        try:
            baseline = export(args.baseline, args.baseline_cache)
        except ValueError as error:
            parser.error(str(error))
        other = baseline_spec(chart_row, baseline)
        groups[0].insert(1, other)
        provenance = {
            "ref": args.baseline,
            "sha": baseline.sha,
            "name": other.name,
            "tree": str(baseline.tree),
            "app": str(imported_app(other)),
            "current_app": str(imported_app(chart_row)),
            "changed_app_files": changed_app_files(baseline.sha),
        }
        if not Path(provenance["app"]).is_relative_to(baseline.tree):
            raise RuntimeError(f"{other.name} would import {provenance['app']}, not its tree's app")
        if not Path(provenance["current_app"]).is_relative_to(ROOT):
            raise RuntimeError(f"{CHART} would import {provenance['current_app']}, not {ROOT / 'app'}")
        changed = len(provenance["changed_app_files"])
        print(
            f"baseline {args.baseline} = {baseline.sha}: {'reused' if baseline.reused else 'exported to'} "
            f"{baseline.tree}; app/ differs from the working tree in {changed} tracked files"
            + (" (an A/A run)" if not changed else ""),
            f"{chart_row.name} imports {provenance['current_app']}",
            f"{other.name} imports {provenance['app']}",
            sep="\n",
            flush=True,
        )
    singles = [stripped_spec(), *others, ceiling_spec()]
    if not args.skip_sdk:
        singles += sdk_specs(ensure_sdk_venv(ROOT / ".bench" / "sdk"))
    groups += [[spec] for spec in _wanted(args.rows, singles)]
    groups = [group for group in groups if group]
    if not groups:
        parser.error(f"--rows {args.rows}: no such row")
    specs = {spec.name: spec for group in groups for spec in group}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
    for round_ in range(args.runs):
        # alternate the order between runs: the servers, and within a group which one is loaded first
        for group in groups if round_ % 2 == 0 else [list(reversed(g)) for g in reversed(groups)]:
            gc.collect()
            measured = measure(
                group,
                concurrency=concurrency,
                seconds=args.seconds,
                sessions=args.sessions if round_ == args.runs - 1 else 0,
                core=server_core,
                redis_core=load_core,
                warmup=args.warmup,
            )
            for spec, result in zip(group, measured, strict=True):
                runs[spec.name].append(result)
                cells = ", ".join(
                    f"c={c['concurrency']} {c['req_per_s']:.0f}/s p99 {c['p99_ms']:.1f} ms "
                    f"{c.get('cpu_us_per_req', float('nan')):.1f} us/req "
                    f"(client {c.get('client_cpu_us_per_req', 0):.1f})"
                    + (f" {c['errors']} errors: {c.get('first_error')}" if c["errors"] else "")
                    for c in result["load"]
                )
                print(f"run {round_ + 1}/{args.runs} {spec.name}: {cells}", flush=True)
    results = {name: median_runs(found) for name, found in runs.items()}
    for name, spec in specs.items():
        check = access_check(spec, runs[name])
        if check is not None:
            results[name]["access_lines"] = check
        if spec.overrides:
            results[name]["overrides"] = {key: dict(value) for key, value in spec.overrides.items()}
            results[name]["chart_values"] = dict(spec.chart_values)
        results[name]["wire"] = spec.wire
    items = acceptance(results)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": cores, "platform": sys.platform, "python": sys.version.split()[0]},
        "method": {
            "seconds": args.seconds,
            "warmup_seconds": args.warmup,
            "runs": args.runs,
            "server_core": server_core,
            "load_core": load_core,
            "redis_core": load_core,
            "load_generator": "raw asyncio streams on uvloop, keep-alive, every answer checked",
        },
        "results": results,
        "ratios_at_16": ratios(results) if 16 in concurrency else {},
        "acceptance": items,
    }
    if NOACCESS in results:
        report["access_log_off_honoured"] = results[NOACCESS].get("access_lines", {}).get("lines") == 0
    if provenance:
        provenance["comparison"] = compare(runs[chart_row.name], runs[provenance["name"]], 16)
        report["baseline"] = provenance
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    chart(results, args.out / "bench.png", f"tools/call echo over streamable HTTP, {report['date'][:10]}")
    print("\n".join(table(results, 16)))
    print(orjson.dumps({"ratios_at_16": report["ratios_at_16"]}).decode())
    for name, found in results.items():
        if "sessions" in found:
            print(f"{name}: sessions {orjson.dumps(found['sessions']).decode()}")
    if NOACCESS in results:
        honoured = report["access_log_off_honoured"]
        print(f"{NOACCESS}: ERLMCP_ACCESS_LOG=false " + ("honoured (0 access lines)" if honoured else
              "NOT honoured (the server still wrote access lines: the setting does not exist yet?)"))  # fmt: skip
    if provenance:
        print(comparison_table(provenance["comparison"], chart_row.name, provenance["name"]))
    print("\n".join(acceptance_lines(items)))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    errors = sum(cell["errors"] for found in results.values() for cell in found["load"])
    unlogged = [
        name for name, found in results.items() if name != NOACCESS and not found.get("access_lines", {"ok": 1})["ok"]
    ]
    if unlogged:
        print(f"access lines do not match the answered requests: {', '.join(unlogged)}")
    return 1 if errors or unlogged else 0
