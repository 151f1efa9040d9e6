"""``python -m benchmarks``: the servers side by side, tools/call throughput and latency, sessions, cold start."""

from __future__ import annotations

import argparse
import asyncio
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

from benchmarks.load import Connection, open_session, run_load
from benchmarks.servers_run import ROOT, SDK_VERSION, ServerSpec, ensure_sdk_venv, rss_kib, start

__all__ = ["main"]


def erlmcp_spec() -> ServerSpec:
    return ServerSpec("erlmcp", (sys.executable, "-m", "app", "--no-auth", "--port", "{port}", "--metrics-port",
                                 "{metrics_port}", "--log-level", "WARNING", "--log-format", "json"),
                      env={"ERLMCP_INITIALIZE_PER_MINUTE": "10000000", "ERLMCP_MAX_SESSIONS": "100000"})  # fmt: skip


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
                head = ["DELETE /mcp HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Length: 0",
                        *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
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
    spec: ServerSpec, *, concurrency: Sequence[int], seconds: float, sessions: int, core: int | None
) -> dict[str, Any]:
    server = start(spec, core=core)
    try:
        loads = [asyncio.run(run_load("127.0.0.1", server.port, "/mcp", concurrency=c, seconds=seconds)).summary()
                 for c in concurrency]  # fmt: skip
        result: dict[str, Any] = {"cold_start_s": round(server.cold_start_s, 3), "load": loads,
                                  "peak_rss_kib": rss_kib(server.process.pid, "VmHWM")}  # fmt: skip
        if sessions:
            result["sessions"] = asyncio.run(sessions_mode(server.port, server.process.pid, sessions))
        return result
    finally:
        server.stop()


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each load figure across runs (the other figures from the last run)."""
    merged = dict(runs[-1])
    merged["load"] = []
    for position, last in enumerate(runs[-1]["load"]):
        cell = dict(last)
        for key in ("req_per_s", "p50_ms", "p90_ms", "p99_ms"):
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
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    cores = os.cpu_count() or 1
    server_core = 0 if cores > 1 else None
    if cores > 1:
        os.sched_setaffinity(0, {1})  # the load generator on core 1, the servers on core 0
    specs = [erlmcp_spec(), ceiling_spec()]
    if not args.skip_sdk:
        specs += sdk_specs(ensure_sdk_venv(ROOT / ".bench" / "sdk"))
    runs: dict[str, list[dict[str, Any]]] = {spec.name: [] for spec in specs}
    for run in range(args.runs):
        for spec in specs if run % 2 == 0 else list(reversed(specs)):  # alternate the order between runs
            gc.collect()
            sessions = args.sessions if run == args.runs - 1 and spec.name != "fastapi-ceiling" else 0
            runs[spec.name].append(measure(spec, concurrency=concurrency, seconds=args.seconds, sessions=sessions,
                                           core=server_core))  # fmt: skip
            print(f"run {run + 1}/{args.runs} {spec.name}: "
                  + ", ".join(f"c={c['concurrency']} {c['req_per_s']:.0f}/s p99 {c['p99_ms']:.1f} ms"
                              for c in runs[spec.name][-1]["load"]), flush=True)  # fmt: skip
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    chart(results, args.out / "bench.png", f"tools/call echo over streamable HTTP, {report['date'][:10]}")
    print(orjson.dumps({"ratios_at_16": report["ratios_at_16"]}).decode())
    for name, found in results.items():
        if "sessions" in found:
            print(f"{name}: sessions {orjson.dumps(found['sessions']).decode()}")
        print(f"{name}: cold start {found['cold_start_s']} s, peak RSS {found['peak_rss_kib']} KiB")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    errors = sum(cell["errors"] for found in results.values() for cell in found["load"])
    return 1 if errors else 0
