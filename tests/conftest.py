"""Shared fixtures: the repository root, the pinned Helm, free ports, real server processes, and one real
Kubernetes control plane for the session."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deployer.marketplace.cluster import Cluster
from deployer.marketplace.local import free_ports
from tests.kube import ControlPlane, binaries_missing

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (this one by default), in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def free_port() -> int:
    """A TCP port nothing listens on right now (two or more at once: :func:`free_ports`, never two calls)."""
    return free_ports(1)[0]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned Helm 3 binary (scripts/install-tools.sh puts it in .tools/bin)."""
    found = shutil.which("helm", path=os.pathsep.join([str(ROOT / ".tools" / "bin"), os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail("helm is not installed: run `make setup` (scripts/install-tools.sh)")
    return found


@dataclass
class RunningServer:
    """A real `python -m app` process on loopback ports."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not ready within {timeout} s")


def start_server(
    tmp_path: Path, args: Sequence[str], env: dict[str, str] | None = None, *, tls: bool = False
) -> RunningServer:
    """A real server process; ready when /readyz answers (with ``tls``: when the metrics listener answers and the
    TLS port accepts connections, since the test's own client decides how to speak TLS to it)."""
    port, metrics_port = free_ports(2)
    log = tmp_path / f"server-{port}.log"
    command = [sys.executable, "-m", "app", "--port", str(port), "--metrics-port", str(metrics_port), *args]
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("ERLMCP_")} | (env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=clean_env)
    server = RunningServer(process, port, metrics_port, log)
    try:
        if tls:
            wait_ready(server.metrics_url, process)
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        else:
            wait_ready(f"{server.url}/readyz", process)
    except AssertionError:
        server.stop()
        raise AssertionError(log.read_text()) from None
    return server


@pytest.fixture
def api_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text("# accepted keys\ntest-key-0123456789abcdef\n", encoding="utf-8")
    return path


@pytest.fixture
def server(tmp_path: Path, api_key_file: Path) -> Iterator[RunningServer]:
    """A real server with API-key authentication."""
    running = start_server(tmp_path, ["--api-key-file", str(api_key_file), "--log-format", "json"])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = binaries_missing()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/install-kube.sh (make test does)")
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
        cluster = Cluster.connect(kubeconfig=plane.kubeconfig)
        crd = yaml.safe_load((ROOT / "deployer/crd/application.yaml").read_text())
        cluster.apply(crd, "default")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            live = cluster.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd["metadata"]["name"], None)
            conditions = {c["type"]: c["status"] for c in ((live or {}).get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            time.sleep(0.2)
        else:
            pytest.fail("the Application CRD was not Established within 30 s")
        cluster.close()
        yield plane
    finally:
        plane.stop()
