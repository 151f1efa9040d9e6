"""In-cluster mode against a real Kubernetes API server: from NAMESPACE and APP_INSTANCE_NAME, verify finds the
app's Services and reads its API key from the app's Secret, as the Marketplace tester Pod must."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployer.marketplace.cluster import Cluster
from tests.conftest import ROOT, RunningServer, start_server
from tests.kube import ControlPlane

pytestmark = pytest.mark.slow
KEY = "cluster-key-0123456789abcdef"


def service_account(control_plane: ControlPlane, folder: Path) -> Path:
    """A service-account folder as a Pod has it: a token the API server accepts, and its CA."""
    folder.mkdir()
    token = (control_plane.root / "pki" / "tokens.csv").read_text().split(",")[0]
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_bytes((control_plane.root / "pki" / "ca.crt").read_bytes())
    return folder


def app_objects(cluster: Cluster, namespace: str) -> None:
    """What the chart makes that verify reads: the two Services and the API-key Secret, labelled with the name."""
    labels = {"app.kubernetes.io/name": "mcp"}
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, namespace)
    for name, port in (("mcp", {"name": "http", "port": 8080}), ("mcp-metrics", {"name": "metrics", "port": 9090})):
        cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace,
                       "labels": labels}, "spec": {"ports": [{**port, "protocol": "TCP"}]}}, namespace)  # fmt: skip
    keys = {"api-keys": base64.b64encode(f"{KEY}\n".encode()).decode()}
    metadata = {"name": "mcp-api-keys", "namespace": namespace, "labels": labels}
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "data": keys}, namespace)


def in_cluster(control_plane: ControlPlane, account: Path, app: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NAMESPACE": "verify-in-cluster", "APP_INSTANCE_NAME": app,
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(control_plane.api_port)}  # fmt: skip
    command = [sys.executable, "-m", "verify", "--service-account-dir", str(account), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture
def keyed_server(tmp_path: Path) -> RunningServer:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    return start_server(tmp_path, ["--api-key-file", str(keys)])


def test_in_cluster_mode_reads_the_key_from_the_apps_secret(
    control_plane: ControlPlane, keyed_server: RunningServer, tmp_path: Path
) -> None:
    cluster = Cluster.connect(kubeconfig=control_plane.kubeconfig)
    try:
        app_objects(cluster, "verify-in-cluster")
    finally:
        cluster.close()
    account = service_account(control_plane, tmp_path / "sa")
    try:
        # The Services' cluster DNS names do not resolve on this machine: point --url at the server, and let
        # verify find the credentials in the cluster.
        done = in_cluster(control_plane, account, "mcp", "--url", keyed_server.url, "--metrics-url",
                          keyed_server.metrics_url, "--only", "security", "--only", "mcp")  # fmt: skip
    finally:
        keyed_server.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS security.missing_credentials_refused" in done.stdout  # so a key was found and used


def test_in_cluster_mode_names_what_it_cannot_find(control_plane: ControlPlane, tmp_path: Path) -> None:
    account = service_account(control_plane, tmp_path / "sa")
    done = in_cluster(control_plane, account, "no-such-app")
    assert done.returncode == 2
    assert "no Service labelled app.kubernetes.io/name=no-such-app with a port named http" in done.stderr


def test_in_cluster_mode_without_a_token_is_bad_usage(control_plane: ControlPlane, tmp_path: Path) -> None:
    done = in_cluster(control_plane, tmp_path / "missing", "mcp")
    assert done.returncode == 2
    assert "no service-account token" in done.stderr


def test_in_cluster_mode_speaks_https_to_a_port_that_declares_it(control_plane: ControlPlane, tmp_path: Path) -> None:
    from verify.incluster import discover

    namespace = "verify-in-cluster-tls"
    labels = {"app.kubernetes.io/name": "tls"}
    cluster = Cluster.connect(kubeconfig=control_plane.kubeconfig)
    try:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}, namespace)
        port = {"name": "http", "port": 8443, "protocol": "TCP", "appProtocol": "https"}
        cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "tls", "namespace": namespace,
                       "labels": labels}, "spec": {"ports": [port]}}, namespace)  # fmt: skip
    finally:
        cluster.close()
    found = discover(namespace, "tls", api_url=f"https://127.0.0.1:{control_plane.api_port}",
                     service_account_dir=service_account(control_plane, tmp_path / "sa"), timeout=10)  # fmt: skip
    assert found.url == f"https://tls.{namespace}.svc:8443"
    assert found.metrics_url == f"http://tls.{namespace}.svc:9090/metrics"
