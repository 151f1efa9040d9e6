"""Starting and stopping the compared servers, pinned to one core, and reading their memory, CPU and logs."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from benchmarks.load import Wire, echo_call, stateless_headers
from deployer.marketplace.local import LocalRedis, RedisPlan, free_ports

__all__ = [
    "SDK_VERSION",
    "ServerSpec",
    "Started",
    "access_lines",
    "cpu_seconds",
    "ensure_sdk_venv",
    "pss_kib",
    "rss_kib",
    "start",
]

ROOT = Path(__file__).resolve().parent.parent
SDK_VERSION = "2.3.0"
SETTLE_SECONDS = 1.0  # after readiness, before the idle RSS is read


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server under comparison."""

    name: str
    command: tuple[str, ...]  # "{port}" and "{metrics_port}" are filled in, here and in env values
    env: dict[str, str] = field(default_factory=dict)  # over the benchmark's own environment (see ``inherit_env``)
    cwd: Path = ROOT  # a baseline's erlmcp runs from its exported tree, so ``-m app`` imports that tree's app
    inherit_env: bool = True  # False: ``env`` is the whole environment (the chart's container gets no other)
    wire: Wire = "session"  # how the load generator talks to it
    api_key: str | None = None  # sent as Authorization: Bearer
    redis: RedisPlan | None = None  # a redis-server started before the server (pinned to the load core)
    log: bool = False  # stdout and stderr to a file (else discarded), where access lines are counted
    access_log: bool | None = None  # True: every answer must have an access line; False: none; None: not checked
    overrides: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)  # env: chart, bench, why
    chart_values: Mapping[str, object] = field(default_factory=dict)  # the values it was rendered with
    sessions: bool = True  # it holds sessions: sessions mode measures them
    from_tree: bool = False  # a baseline: runs from its own exported tree (checked from /proc once started)

    def environment(self, port: int, metrics_port: int) -> dict[str, str]:
        """The process environment, the ports filled in."""
        own = {
            key: value.replace("{port}", str(port)).replace("{metrics_port}", str(metrics_port))
            for key, value in self.env.items()
        }
        return {**os.environ, **own} if self.inherit_env else own


@dataclass
class Started:
    """A running server (and its Redis)."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    port: int
    cold_start_s: float
    idle_rss_kib: int = 0
    idle_pss_tree_kib: int = 0  # the proportional set size of it and the processes below it (tool workers)
    log_path: Path | None = None
    redis: LocalRedis | None = None
    folder: Path | None = None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def probe_request(port: int, wire: Wire, key: str | None) -> bytes:
    """What readiness asks: initialize (the session wire) or one 2026-07-28 tools/call echo (stateless)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if wire == "session":
        body = (
            b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            b'"capabilities":{},"clientInfo":{"name":"probe","version":"1"}}}'
        )
    else:
        body = echo_call(0, "stateless")
        headers |= stateless_headers("tools/call", "echo")
    lines = [
        "POST /mcp HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        "Connection: close",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _answers(port: int, request: bytes) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(request)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _pinned(command: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    return command


def _start_redis(plan: RedisPlan, folder: Path, core: int | None) -> LocalRedis:
    """The chart's redis-server, pinned to ``core`` (the load generator's: its CPU is not the server's)."""
    pinned = dataclasses.replace(plan.pod, argv=tuple(_pinned(list(plan.pod.argv), core)))
    redis = LocalRedis(dataclasses.replace(plan, pod=pinned), folder / "redis.log")
    redis.start(ready_timeout=30)
    return redis


def start(spec: ServerSpec, *, core: int | None, redis_core: int | None = None) -> Started:
    """Start a server (pinned to ``core`` when given; its Redis first, on ``redis_core``) and wait until it
    answers its probe (cold start: from Popen to that first 200); then let it settle and read its idle RSS."""
    port, metrics_port = free_ports(2, frozenset({spec.redis.port}) if spec.redis else frozenset())
    command = _pinned([part.format(port=port, metrics_port=metrics_port) for part in spec.command], core)
    folder = Path(tempfile.mkdtemp(prefix=f"erlmcp-bench-{spec.name}-"))
    try:
        redis = _start_redis(spec.redis, folder, redis_core) if spec.redis is not None else None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log_path = folder / "server.log" if spec.log else None
    output = log_path.open("wb") if log_path is not None else subprocess.DEVNULL
    request = probe_request(port, spec.wire, spec.api_key)
    began = time.perf_counter()
    try:
        process = subprocess.Popen(
            command, cwd=spec.cwd, env=spec.environment(port, metrics_port), stdout=output, stderr=subprocess.STDOUT
        )
    finally:
        if not isinstance(output, int):
            output.close()  # the child holds its own descriptor
    deadline = began + 60
    while not _answers(port, request):
        if process.poll() is not None or time.perf_counter() > deadline:
            process.kill()
            process.wait()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path is not None else ""
            if redis is not None:
                redis.stop()
            shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"{spec.name} did not start (exit {process.poll()}){': ' + tail if tail else ''}")
        time.sleep(0.005)
    cold = time.perf_counter() - began
    time.sleep(SETTLE_SECONDS)
    tree = sum(pss_kib(pid) for pid in descendants(process.pid))
    return Started(spec, process, port, cold, rss_kib(process.pid), tree, log_path, redis, folder)


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """Resident memory of a process in KiB (``VmHWM`` for the peak; 0 when it has ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of a process in KiB (pages shared with its forked workers counted once over all of
    them), from ``/proc/PID/smaps_rollup``; 0 when it has ended."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in rollup.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """The process and every process below it (tool workers), from ``/proc/PID/task/*/children``."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                queue += [int(child) for child in children.read_text().split()]
            except OSError:
                continue  # the thread or process ended meanwhile
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far of a process (all its threads) and of the processes below it (its tool
    workers), from ``/proc/PID/stat``."""
    total = 0
    for each in descendants(pid):
        try:
            # After the command name (which may hold spaces and parentheses): state is field 3, utime 14, stime 15.
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def access_lines(path: Path, offset: int) -> tuple[int, int]:
    """The access lines (JSON lines with ``httpRequest``) written to the log at ``path`` after ``offset``, and the
    offset past the last whole line read."""
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    end = data.rfind(b"\n") + 1
    count = 0
    for line in data[:end].splitlines():
        if b'"httpRequest"' in line:
            try:
                count += "httpRequest" in orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
    return count, offset + end


def ensure_sdk_venv(folder: Path) -> Path:
    """A virtualenv with the pinned official SDK (and uvloop, httptools), made once; its python."""
    python = folder / "bin" / "python"
    marker = folder / f".mcp-{SDK_VERSION}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"mcp=={SDK_VERSION}", "uvicorn[standard]"], check=True)
        marker.touch()
    return python
