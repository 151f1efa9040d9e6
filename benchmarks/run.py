"""``python -m benchmarks``: the servers side by side, tools/call throughput and latency, sessions, cold start.

With ``--baseline REF`` erlmcp as of git REF runs too (row ``erlmcp@SHA``), measured in turn with the working
tree's erlmcp at each client count of every run, and ``current / baseline`` at 16 clients is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

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
from benchmarks.load import Connection, open_session, run_load
from benchmarks.servers_run import (
    ROOT,
    SDK_VERSION,
    ServerSpec,
    Started,
    cpu_seconds,
    ensure_sdk_venv,
    rss_kib,
    start,
)

__all__ = ["main"]


def erlmcp_spec() -> ServerSpec:
    flags = "--no-auth --port {port} --metrics-port {metrics_port} --log-level WARNING --log-format json"
    return ServerSpec(
        "erlmcp",
        (sys.executable, "-m", "app", *flags.split()),
        env={
            "ERLMCP_INITIALIZE_PER_MINUTE": "10000000",
            "ERLMCP_MAX_SESSIONS": "100000",
            "ERLMCP_MAX_SESSIONS_PER_PRINCIPAL": "0",  # the bench opens its sessions as one client
        },
    )


def ceiling_spec() -> ServerSpec:
    return ServerSpec(
        "fastapi-ceiling", (sys.executable, str(ROOT / "benchmarks/servers/fastapi_ceiling.py"), "{port}")
    )


def sdk_specs(python: Path) -> list[ServerSpec]:
    script = str(ROOT / "benchmarks/servers/sdk_server.py")
    return [
        ServerSpec(f"python-sdk-{SDK_VERSION}-{mode}", (str(python), script, "{port}", mode))
        for mode in ("sse", "json")
    ]


async def sessions_mode(port: int, pid: int, count: int) -> dict[str, Any]:
    """Open ``count`` sessions (initialize/s, KiB each), delete them, open a second wave (memory freed?)."""

    async def wave() -> tuple[list[dict[str, str]], float]:
        opened: list[dict[str, str]] = []
        workers = 16

        async def worker(share: int) -> None:
            connection = Connection("127.0.0.1", port)
            await connection.connect()
            try:
                for _ in range(share):
                    opened.append(await open_session("127.0.0.1", port, "/mcp", connection))
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


def measure(
    specs: Sequence[ServerSpec],
    *,
    concurrency: Sequence[int],
    seconds: float,
    sessions: int,
    core: int | None,
    cpu: bool = False,
) -> list[dict[str, Any]]:
    """Start the servers of ``specs``, then load each in turn at every client count (two servers: A B at 1 client,
    A B at 16, ...), so that whatever else the machine does hits them alike. One result per spec.

    ``cpu``: each load cell also has the server's CPU microseconds per request (from ``/proc/PID/stat``).
    """
    servers: list[Started] = []
    try:
        for spec in specs:
            servers.append(start(spec, core=core))
            if spec.cwd != ROOT:
                check_runs_from(servers[-1].process.pid, spec)  # a baseline: really its own tree
        loads: list[list[dict[str, Any]]] = [[] for _ in servers]
        for clients in concurrency:
            for server, cells in zip(servers, loads, strict=True):
                clock = functools.partial(cpu_seconds, server.process.pid) if cpu else None
                load = run_load("127.0.0.1", server.port, "/mcp", concurrency=clients, seconds=seconds, cpu_clock=clock)
                cells.append(asyncio.run(load).summary())
        results: list[dict[str, Any]] = []
        for server, cells in zip(servers, loads, strict=True):
            result: dict[str, Any] = {
                "cold_start_s": round(server.cold_start_s, 3),
                "load": cells,
                "peak_rss_kib": rss_kib(server.process.pid, "VmHWM"),
            }
            if sessions:
                result["sessions"] = asyncio.run(sessions_mode(server.port, server.process.pid, sessions))
            results.append(result)
        return results
    finally:
        for server in servers:
            server.stop()


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each load figure across runs (the other figures from the last run)."""
    merged = dict(runs[-1])
    merged["load"] = []
    for position, last in enumerate(runs[-1]["load"]):
        cell = dict(last)
        for key in ("req_per_s", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req"):
            if all(key in run["load"][position] for run in runs):
                cell[key] = statistics.median(run["load"][position][key] for run in runs)
        cell["errors"] = sum(run["load"][position]["errors"] for run in runs)
        merged["load"].append(cell)
    merged["cold_start_s"] = statistics.median(run["cold_start_s"] for run in runs)
    return merged


def ratios(results: dict[str, dict[str, Any]], at: int) -> dict[str, float]:
    def rate(name: str) -> float | None:
        for cell in results.get(name, {}).get("load", []):
            if cell["concurrency"] == at:
                return float(cell["req_per_s"])
        return None

    ours = rate("erlmcp") or 0.0
    found: dict[str, float] = {}
    sdk = [r for name in results if name.startswith("python-sdk") and (r := rate(name))]
    if sdk:
        found["vs_python_sdk_best"] = round(ours / max(sdk), 2)
    if ceiling := rate("fastapi-ceiling"):
        found["vs_fastapi_ceiling"] = round(ours / ceiling, 2)
    return found


def chart(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    levels = [cell["concurrency"] for cell in results[names[0]]["load"]]
    figure, (rates, tails) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        cells = results[name]["load"]
        xs = [i + index * width for i in range(len(levels))]
        rates.bar(xs, [c["req_per_s"] for c in cells], width, label=name)
        tails.bar(xs, [c["p99_ms"] for c in cells], width, label=name)
    for axis, label in ((rates, "tools/call per second"), (tails, "p99 latency (ms)")):
        axis.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(levels))])
        axis.set_xticklabels([f"{c} clients" for c in levels])
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    rates.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs per server; medians are reported (default 3)")
    parser.add_argument("--concurrency", default="1,16,64", help="client counts (default 1,16,64)")
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions per wave in sessions mode (0: skip)")
    parser.add_argument("--skip-sdk", action="store_true", help="do not install or run the official SDK server")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results", help="folder for JSON and PNG")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run erlmcp as of git REF (row erlmcp@SHA; its tree exported once into --baseline-cache), "
        "measured in turn with the working tree's erlmcp in every run; prints current / baseline at 16 clients",
    )
    parser.add_argument(
        "--baseline-cache", type=Path, default=CACHE, help=f"where --baseline trees are exported (default {CACHE})"
    )
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.baseline is not None and 16 not in concurrency:
        parser.error("--baseline compares tools/call at 16 clients: --concurrency must include 16")
    cores = os.cpu_count() or 1
    server_core = 0 if cores > 1 else None
    if cores > 1:
        os.sched_setaffinity(0, {1})  # the load generator on core 1, the servers on core 0
    current = erlmcp_spec()
    groups = [[current]]  # the servers of a group run together and are loaded in turn, cell by cell
    provenance: dict[str, Any] = {}
    if args.baseline is not None:
        try:
            baseline = export(args.baseline, args.baseline_cache)
        except ValueError as error:
            parser.error(str(error))
        other = baseline_spec(current, baseline)
        groups = [[current, other]]
        provenance = {
            "ref": args.baseline,
            "sha": baseline.sha,
            "name": other.name,
            "tree": str(baseline.tree),
            "app": str(imported_app(other)),
            "current_app": str(imported_app(current)),
            "changed_app_files": changed_app_files(baseline.sha),
        }
        if not Path(provenance["app"]).is_relative_to(baseline.tree):
            raise RuntimeError(f"{other.name} would import {provenance['app']}, not its tree's app")
        if not Path(provenance["current_app"]).is_relative_to(ROOT):
            raise RuntimeError(f"erlmcp would import {provenance['current_app']}, not {ROOT / 'app'}")
        changed = len(provenance["changed_app_files"])
        print(
            f"baseline {args.baseline} = {baseline.sha}: {'reused' if baseline.reused else 'exported to'} "
            f"{baseline.tree}; app/ differs from the working tree in {changed} tracked files"
            + (" (an A/A run)" if not changed else ""),
            f"{current.name} imports {provenance['current_app']}",
            f"{other.name} imports {provenance['app']}",
            sep="\n",
            flush=True,
        )
    groups.append([ceiling_spec()])
    if not args.skip_sdk:
        groups += [[spec] for spec in sdk_specs(ensure_sdk_venv(ROOT / ".bench" / "sdk"))]
    runs: dict[str, list[dict[str, Any]]] = {spec.name: [] for group in groups for spec in group}
    for run in range(args.runs):
        # alternate the order between runs: the servers, and within a group which one is loaded first
        for group in groups if run % 2 == 0 else [list(reversed(g)) for g in reversed(groups)]:
            gc.collect()
            sessions = args.sessions if run == args.runs - 1 and group[0].name != "fastapi-ceiling" else 0
            measured = measure(
                group,
                concurrency=concurrency,
                seconds=args.seconds,
                sessions=sessions,
                core=server_core,
                cpu=len(group) > 1,
            )
            for spec, result in zip(group, measured, strict=True):
                runs[spec.name].append(result)
                cells = ", ".join(
                    f"c={c['concurrency']} {c['req_per_s']:.0f}/s p99 {c['p99_ms']:.1f} ms"
                    + (f" {c['cpu_us_per_req']:.1f} us/req" if "cpu_us_per_req" in c else "")
                    for c in result["load"]
                )
                print(f"run {run + 1}/{args.runs} {spec.name}: {cells}", flush=True)
    results = {name: median_runs(found) for name, found in runs.items()}
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": cores, "platform": sys.platform, "python": sys.version.split()[0]},
        "method": {
            "seconds": args.seconds,
            "runs": args.runs,
            "server_core": server_core,
            "load_core": 1 if cores > 1 else None,
        },
        "results": results,
        "ratios_at_16": ratios(results, 16) if 16 in concurrency else {},
    }
    if provenance:
        provenance["comparison"] = compare(runs[current.name], runs[provenance["name"]], 16)
        report["baseline"] = provenance
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    chart(results, args.out / "bench.png", f"tools/call echo over streamable HTTP, {report['date'][:10]}")
    print(orjson.dumps({"ratios_at_16": report["ratios_at_16"]}).decode())
    for name, found in results.items():
        if "sessions" in found:
            print(f"{name}: sessions {orjson.dumps(found['sessions']).decode()}")
        print(f"{name}: cold start {found['cold_start_s']} s, peak RSS {found['peak_rss_kib']} KiB")
    if provenance:
        print(comparison_table(provenance["comparison"], current.name, provenance["name"]))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    errors = sum(cell["errors"] for found in results.values() for cell in found["load"])
    return 1 if errors else 0
