"""Starting and stopping the compared servers, pinned to one core, and reading their memory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployer.local import free_ports

__all__ = ["SDK_VERSION", "ServerSpec", "Started", "cpu_seconds", "ensure_sdk_venv", "rss_kib", "start"]

ROOT = Path(__file__).resolve().parent.parent
SDK_VERSION = "2.3.0"


@dataclass(frozen=True)
class ServerSpec:
    """How to run one server under comparison."""

    name: str
    command: tuple[str, ...]  # "{port}" and "{metrics_port}" are filled in
    env: dict[str, str] = field(default_factory=dict)  # over the benchmark's own environment
    cwd: Path = ROOT  # a baseline's erlmcp runs from its exported tree, so ``-m app`` imports that tree's app


@dataclass
class Started:
    """A running server."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    port: int
    cold_start_s: float

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answers_initialize(port: int) -> bool:
    body = (
        b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"capabilities":{},"clientInfo":{"name":"probe","version":"1"}}}'
    )
    request = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(request.encode() + body)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start(spec: ServerSpec, *, core: int | None) -> Started:
    """Start a server (pinned to ``core`` when given) and wait until it answers initialize."""
    port, metrics_port = free_ports(2)
    command = [part.format(port=port, metrics_port=metrics_port) for part in spec.command]
    if core is not None and shutil.which("taskset"):
        command = ["taskset", "-c", str(core), *command]
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=spec.cwd, env={**os.environ, **spec.env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = began + 60
    while not _answers_initialize(port):
        if process.poll() is not None or time.perf_counter() > deadline:
            process.kill()
            raise RuntimeError(f"{spec.name} did not start (exit {process.poll()})")
        time.sleep(0.01)
    return Started(spec, process, port, time.perf_counter() - began)


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """Resident memory of a process in KiB (``VmHWM`` for the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far, from ``/proc/PID/stat``."""
    # Fields after the command name (which may hold spaces and parentheses): state is field 3, utime 14, stime 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
