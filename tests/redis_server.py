"""A real redis-server for tests: on a loopback port of its own, which a test may pause (SIGSTOP: Redis is there
but answers nothing, like a hung server or a partition), kill and start again on the same port (with
``persistent``, an append-only file synced on every write keeps the data across a SIGKILL)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


class RedisServer:
    def __init__(self, workdir: Path, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/install-redis.sh (make setup does)")
        self.port = free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        self._command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence,
                         "--dir", str(workdir)]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        """A redis-cli command's output (empty when Redis does not answer within a second)."""
        command = ["redis-cli", "-p", str(self.port), *args]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=1).stdout.strip()
        except subprocess.TimeoutExpired:
            return ""

    def commands(self) -> dict[str, int]:
        """How many times each command ran since the last ``CONFIG RESETSTAT`` (refused calls not counted), but for
        redis-cli's own and a connection's set-up."""
        counts: dict[str, int] = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, stats = line.removeprefix("cmdstat_").split(":", 1)
                fields = dict(item.split("=") for item in stats.split(","))
                if int(fields["calls"]):  # (a command an ACL refused is listed with its rejected calls only)
                    counts[name] = int(fields["calls"])
        for ignored in ("info", "config|resetstat", "client|setinfo", "hello", "ping", "select"):
            counts.pop(ignored, None)
        return counts

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            assert self._process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return self

    def pause(self) -> None:
        """SIGSTOP: connections are accepted (by the kernel) and never answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: gone at once, as in a crash; connections are refused until :meth:`start`."""
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self._process.terminate()
            self._process.wait(10)
