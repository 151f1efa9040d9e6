"""`python -m deployer` as a user runs it: render to stdout, the local demo end to end, refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deployer.marketplace.local import free_ports
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def deployer(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(ROOT / ".tools" / "bin"), os.environ.get("PATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "deployer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PATH": path, **(env or {})},
    )


def values_file(tmp_path: Path, **values: object) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def test_render_prints_the_manifests_on_stdout(tmp_path: Path) -> None:
    values = values_file(tmp_path, name="r9", namespace="n9", __image_repo_prefix__="gcr.io/p/erlmcp")
    result = deployer("render", "-f", str(values))
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc)
    # Two Secrets: the API keys and the server's state key. The TLS certificate Marketplace generates is rendered only
    # for an Ingress (exposure=ingress), and by default nothing is exposed.
    assert kinds == ["Application", "ConfigMap", "Deployment", "NetworkPolicy", "NetworkPolicy", "Pod", "Secret",
                     "Secret", "Service", "Service", "ServiceAccount"]  # fmt: skip


def test_an_unknown_value_is_refused_with_exit_2_naming_it(tmp_path: Path) -> None:
    values = values_file(tmp_path, replicas=3, __image_repo_prefix__="gcr.io/p/erlmcp")
    result = deployer("render", "-f", str(values))
    assert result.returncode == 2
    assert "No such property defined in schema: 'replicas'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("scale", [["--set", "replicaCount=3"], ["--set", "autoscaling.enabled=true"]])
def test_more_than_one_replica_with_sessions_in_pod_memory_exits_2_naming_sessions_store(scale: list[str]) -> None:
    result = deployer("render", "--image-repo-prefix", "gcr.io/p/erlmcp", *scale)
    assert result.returncode == 2, result.stderr
    assert "sessions.store=pod" in result.stderr
    assert "sessions.store=redis" in result.stderr
    assert result.stdout == ""


def test_the_demo_runs_the_rendered_pod_locally_and_verifies_it(tmp_path: Path) -> None:
    port, metrics_port = free_ports(2)
    values = values_file(tmp_path, **{"service.port": port, "service.metricsPort": metrics_port})
    junit = tmp_path / "verify.xml"
    result = deployer("demo", "-f", str(values), "--image-repo-prefix", "gcr.io/p/erlmcp", "--junit", str(junit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "29 passed, 0 failed, 2 skipped" in result.stdout  # TLS (http) and the 429 (no limit given) skipped
    assert "ERLMCP_API_KEY_FILE=" in result.stdout
    assert "== demo passed" in result.stdout
    assert junit.exists()
    with socket.socket() as probe:  # the server was stopped
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_demo_with_end_to_end_tls_serves_https_and_the_tester_trusts_the_chart_made_ca(tmp_path: Path) -> None:
    port, metrics_port = free_ports(2)
    values = values_file(tmp_path, **{"service.port": port, "service.metricsPort": metrics_port,
                                      "serverTls.enabled": True})  # fmt: skip
    result = deployer("demo", "-f", str(values), "--image-repo-prefix", "gcr.io/p/erlmcp")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS tls.certificate" in result.stdout  # over https, against the certificate the chart made
    assert "30 passed, 0 failed, 1 skipped" in result.stdout
    assert "ERLMCP_TLS_CERT_FILE=" in result.stdout


def test_the_demo_refuses_a_taken_port_and_says_which(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        values = values_file(tmp_path, **{"service.port": port, "service.metricsPort": free_port()})
        result = deployer("demo", "-f", str(values), "--image-repo-prefix", "gcr.io/p/erlmcp")
    assert result.returncode == 1
    assert f"http ({port})" in result.stderr


def test_install_without_a_cluster_fails_and_says_so(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    result = deployer("install", "--image-repo-prefix", "gcr.io/p/erlmcp", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 1
    assert "no Kubernetes cluster is configured" in result.stderr


def test_install_against_an_unreachable_api_server_fails_and_says_so(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    result = deployer("install", "--image-repo-prefix", "gcr.io/p/erlmcp", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 1
    assert "the Kubernetes API server cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr


def test_install_dry_run_prints_what_would_be_applied_and_needs_no_cluster() -> None:
    result = deployer("install", "--dry-run", "-n", "apps", "--name", "mcp", "--image-repo-prefix", "gcr.io/p/erlmcp",
                      "-o", "json", env={"KUBECONFIG": "/nonexistent"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dryRun"] is True
    kinds = {item["kind"] for item in report["objects"]}
    assert {"Application", "Deployment", "Service", "Secret", "ConfigMap"} <= kinds


@pytest.mark.parametrize(("content", "message"), [(b"\xff\xfe", "UTF-8"), (b"a: [", "YAML"), (b"- 1\n", "mapping")])
def test_a_values_file_that_cannot_be_read_is_refused_with_exit_2(tmp_path: Path, content: bytes, message: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_bytes(content)
    result = deployer("render", "-f", str(values), "--image-repo-prefix", "gcr.io/p/erlmcp")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_kubeconfig_is_reported_without_a_traceback(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("clusters: [unclosed\n")
    result = deployer("status", "--name", "mcp", env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 1
    assert "no Kubernetes cluster is configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_timeout_variable_that_is_not_a_number_is_bad_input(tmp_path: Path) -> None:
    result = deployer("marketplace", "--data", str(tmp_path), env={"WAIT_FOR_READY_TIMEOUT": "5m"})
    assert result.returncode == 2
    assert "--wait-timeout: invalid float value: '5m'" in result.stderr


def test_render_after_make_setup_needs_no_flags_and_no_path_change(tmp_path: Path) -> None:
    # What a new user types first: no values, no --image-repo-prefix, and .tools/bin (the pinned Helm) not on PATH.
    result = subprocess.run(
        [sys.executable, "-m", "deployer", "render"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": str(tmp_path)},  # an empty folder: no Helm on PATH at all
    )
    assert result.returncode == 0, result.stderr
    [deployment] = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("gcr.io/erlmcp-public/erlmcp:")  # the documented public images


def test_a_values_files_image_prefix_wins_over_the_default(tmp_path: Path) -> None:
    values = values_file(tmp_path, __image_repo_prefix__="gcr.io/p/erlmcp")
    result = deployer("render", "-f", str(values))
    assert result.returncode == 0, result.stderr
    [deployment] = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("gcr.io/p/erlmcp:")
