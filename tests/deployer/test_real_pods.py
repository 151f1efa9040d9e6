"""The tester for real: ``python -m deployer marketplace --test`` (mpdev verify's flow) and ``helm test`` run the
chart's tester Pod, built from the Dockerfile's tester target, against the server Pod, built from its server target,
both run as real containers by a real kubelet (tests/node.py) next to a real control plane with all of its controllers.

The images are built with scripts/build-images.sh (cached by the engine; the first build takes minutes) and copied
into the node's engine. How Pods get a network on a machine without CNI, kube-proxy or DNS is in tests/node.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import __version__
from deployer.marketplace.cluster import Cluster
from deployer.marketplace.local import free_ports
from tests.conftest import ROOT
from tests.deployer.marketplace.test_cluster import application, data_dirs, marketplace, provision
from tests.kube import ControlPlane, binaries_missing
from tests.node import ENGINE_STATE, HOST_NETWORK_LABEL, NODE_NAME, Node, NodeUnavailable, node_binaries_missing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # a first image build takes many minutes

PREFIX = "erlmcp-local/erlmcp"  # what scripts/build-images.sh builds (tests/images builds the same)
SERVER_IMAGE, TESTER_IMAGE = f"{PREFIX}:{__version__}", f"{PREFIX}/tester:{__version__}"
BUILD_ENGINE = ENGINE_STATE.parent / "docker"  # scripts/container-engine.sh's default engine
TIMINGS: dict[str, float] = {}


def _engine_running(state: Path) -> bool:
    env = {**os.environ, "DOCKER_HOST": f"unix://{state / 'docker.sock'}"}
    return subprocess.run(["docker", "version"], env=env, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """The server and tester images, built; the environment that reaches the engine holding them."""
    was_running = _engine_running(BUILD_ENGINE)
    began = time.monotonic()
    built = subprocess.run(["bash", "scripts/build-images.sh", PREFIX, __version__], cwd=ROOT, capture_output=True,
                           text=True, timeout=1800, check=False)  # fmt: skip
    if built.returncode == 3:
        pytest.skip(f"no container engine can run on this machine: {built.stderr.strip()}")
    assert built.returncode == 0, built.stdout + built.stderr
    TIMINGS["images built (scripts/build-images.sh)"] = time.monotonic() - began
    yield {**os.environ, "DOCKER_HOST": f"unix://{BUILD_ENGINE / 'docker.sock'}"}
    if not was_running:
        subprocess.run(["bash", "scripts/container-engine.sh", "stop"], cwd=ROOT, capture_output=True, check=False)


@pytest.fixture(scope="module")
def real_cluster(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, str]
) -> Iterator[tuple[ControlPlane, Node]]:
    """A control plane with every controller, and a node that runs Pods, with the images loaded."""
    missing = binaries_missing() + node_binaries_missing()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/install-kube.sh (make test does)")
    root = tmp_path_factory.mktemp("real-cluster")
    plane = ControlPlane(root / "control-plane", controllers="*")
    plane.start()
    node = Node(plane, root / "node")
    try:
        cluster = Cluster.connect(kubeconfig=plane.kubeconfig)
        crd = yaml.safe_load((ROOT / "deployer/crd/application.yaml").read_text())
        cluster.apply(crd, "default")
        cluster.close()
        began = time.monotonic()
        try:
            node.start()
        except NodeUnavailable as exc:
            pytest.skip(f"the node's container engine cannot run on this machine: {exc}")
        TIMINGS["node started (engine, webhook, scheduler, kubelet Ready)"] = time.monotonic() - began
        began = time.monotonic()
        node.load_images([SERVER_IMAGE, TESTER_IMAGE], images)
        TIMINGS["images copied into the node's engine"] = time.monotonic() - began
        yield plane, node
    finally:
        node.stop()
        left = node.leftovers()
        plane.stop()
        print("\n".join(f"{what}: {seconds:.1f} s" for what, seconds in TIMINGS.items()))
    assert left == [], f"the node left behind: {left}"


@pytest.fixture
def cluster(real_cluster: tuple[ControlPlane, Node]) -> Iterator[Cluster]:
    found = Cluster.connect(kubeconfig=real_cluster[0].kubeconfig)
    yield found
    found.close()


_namespaces = iter(range(1, 1000))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace whose Pods the node's webhook puts on the host network; deleted afterwards."""
    name = f"real{next(_namespaces)}-{os.getpid()}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": {HOST_NETWORK_LABEL: "true"}}}, name)  # fmt: skip
    deadline = time.monotonic() + 30  # Pods without a serviceAccountName need the controller's "default"
    while cluster.get("v1", "ServiceAccount", "default", name) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    yield name
    cluster.delete("v1", "Namespace", name, "")


def marketplace_data(tmp_path: Path, namespace: str, **values: Any) -> tuple[Path, Path]:
    """/data and /data-test as the deployer image built by scripts/build-images.sh holds them (images named by the
    local prefix), and the values provisioning writes: free host ports for the Service (Pods share the host's
    network here, and a Service port is its container port in this chart), no load balancer."""
    data, data_test = data_dirs(tmp_path, namespace)
    written = yaml.safe_load((data / "values.yaml").read_text())
    port, metrics_port = free_ports(2)
    written |= {
        "__image_repo_prefix__": PREFIX,
        "service.port": port,
        "service.metricsPort": metrics_port,
        "ingressAvailable": False,
    }  # INGRESS_AVAILABLE: no cloud gives this cluster a load balancer
    (data / "values.yaml").write_text(yaml.safe_dump(written | values))
    test_schema = (data_test / "schema.yaml").read_text().replace("gcr.io/erlmcp-test/erlmcp", PREFIX)
    (data_test / "schema.yaml").write_text(test_schema)
    return data, data_test


def provision_app_account(cluster: Cluster, namespace: str) -> None:
    """The app's ServiceAccount (the schema's SERVICE_ACCOUNT property), which mpdev or the Marketplace UI makes
    before the deployer runs: without it no server Pod may be created."""
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "mcp-serviceaccount", "namespace": namespace}}, namespace)  # fmt: skip


def diagnostics(node: Node, cluster: Cluster, namespace: str) -> str:
    """What a failed assertion shows: the namespace's Pods, the node's containers and logs."""
    pods = [(p["metadata"]["name"], (p.get("status") or {}).get("phase"),
             [(s.get("name"), s.get("state")) for s in (p.get("status") or {}).get("containerStatuses") or []])
            for p in cluster.list("v1", "Pod", namespace, labels={})]  # fmt: skip
    logs = []
    for container in node.containers():
        if namespace in container["Names"] and not container["Names"].startswith("k8s_POD"):
            done = subprocess.run(["docker", "logs", "--tail", "30", container["ID"]], env=node.env,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            logs.append(f"--- {container['Names']} ({container['State']})\n{done.stdout}{done.stderr}")
    return f"pods: {pods}\n" + "\n".join(logs) + f"\n--- kubelet\n{node.log_tail('kubelet', 30)}"


def smoke_lines(stderr: str, tester: str = "mcp-test") -> list[str]:
    return [line.removeprefix(f"SMOKE_TEST {tester}: ") for line in stderr.splitlines()
            if line.startswith(f"SMOKE_TEST {tester}: ")]  # fmt: skip


def the_server_pod(cluster: Cluster, namespace: str) -> dict[str, Any]:
    pods = cluster.list("v1", "Pod", namespace, labels={"app.kubernetes.io/name": "mcp",
                                                       "app.kubernetes.io/component": "server"})  # fmt: skip
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def test_mpdev_verify_runs_the_tester_pod_against_the_real_server_pod(
    real_cluster: tuple[ControlPlane, Node], cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    plane, node = real_cluster
    provision(cluster, namespace)
    provision_app_account(cluster, namespace)
    data, data_test = marketplace_data(tmp_path, namespace)
    began = time.monotonic()
    done = marketplace(plane, data, data_test, "--test", "--wait-timeout", "240", "--tester-timeout", "240")
    TIMINGS["test 1: deployer marketplace --test (30 s stability wait included)"] = time.monotonic() - began
    assert done.returncode == 0, done.stderr + diagnostics(node, cluster, namespace)
    assert "tester mcp-test: Succeeded" in done.stderr
    lines = smoke_lines(done.stderr)
    # The verify suite's own report, read by the deployer through the API server from the kubelet.
    assert any(line.startswith("PASS mcp.tools_call ") for line in lines), lines
    assert re.fullmatch(r"\d+ passed, 0 failed(, \d+ skipped)?", lines[-1]), lines
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Success"  # type: ignore[index]
    # The server answered from a real container of the real image, on the node, put on the host network.
    pod = the_server_pod(cluster, namespace)
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["spec"]["hostNetwork"] is True
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True
    assert status["image"].endswith(SERVER_IMAGE)
    container_id = status["containerID"].removeprefix("docker://")
    running = {c["ID"]: c for c in node.containers()}
    assert running[container_id]["State"] == "running"
    assert running[container_id]["Image"] == node.image_id(SERVER_IMAGE)  # dockershim runs images by ID


def helm_install(plane: ControlPlane, helm: str, namespace: str, release: str) -> subprocess.CompletedProcess[str]:
    """``helm install --wait`` of the chart with the local images and free host ports (what ``helm test`` needs: a
    release record, which the deployer does not write)."""
    env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig)}
    port, metrics_port = free_ports(2)
    values = ["--set", f"image.repository={PREFIX}", "--set", f"image.tag={__version__}",
              "--set", f"tester.image.repository={PREFIX}/tester", "--set", f"tester.image.tag={__version__}",
              "--set", f"service.port={port}", "--set", f"service.metricsPort={metrics_port}"]  # fmt: skip
    return subprocess.run([helm, "install", release, str(ROOT / "chart"), "-n", namespace, *values, "--wait",
                           "--timeout", "4m"], env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def test_helm_test_runs_the_chart_test_pod_to_success(
    real_cluster: tuple[ControlPlane, Node], cluster: Cluster, namespace: str, helm: str
) -> None:
    plane, node = real_cluster
    began = time.monotonic()
    installed = helm_install(plane, helm, namespace, "rel")
    TIMINGS["test 2: helm install --wait"] = time.monotonic() - began
    assert installed.returncode == 0, installed.stderr + diagnostics(node, cluster, namespace)
    began = time.monotonic()
    tested = subprocess.run([helm, "test", "rel", "-n", namespace, "--logs", "--timeout", "4m"],
                            env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)}, capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    TIMINGS["test 2: helm test --logs"] = time.monotonic() - began
    assert tested.returncode == 0, tested.stdout + tested.stderr + diagnostics(node, cluster, namespace)
    assert re.search(r"TEST SUITE:\s+rel-test", tested.stdout), tested.stdout
    assert re.search(r"Phase:\s+Succeeded", tested.stdout), tested.stdout
    assert re.search(r"(?m)^PASS mcp\.tools_call ", tested.stdout), tested.stdout  # the Pod's log, via the kubelet
    assert re.search(r"(?m)^\d+ passed, 0 failed", tested.stdout), tested.stdout


def test_the_tester_image_in_cluster_mode_finds_the_app_through_the_api_server(
    real_cluster: tuple[ControlPlane, Node], cluster: Cluster, namespace: str, helm: str
) -> None:
    """Given only NAMESPACE and APP_INSTANCE_NAME (as Marketplace gives a tester), verify finds the Services and
    the API key with its Pod's service-account token, over the in-cluster API address, and verifies the app."""
    plane, node = real_cluster
    installed = helm_install(plane, helm, namespace, "app")
    assert installed.returncode == 0, installed.stderr + diagnostics(node, cluster, namespace)
    began = time.monotonic()
    meta = {"name": "verify", "namespace": namespace}
    for manifest in (
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": [{"apiGroups": [""], "resources": ["services", "secrets"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "verify"},
         "subjects": [{"kind": "ServiceAccount", "name": "verify", "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
         "spec": {"serviceAccountName": "verify", "restartPolicy": "Never",
                  "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000},
                  "containers": [{"name": "verify", "image": TESTER_IMAGE,
                                  "env": [{"name": "NAMESPACE", "value": namespace},
                                          {"name": "APP_INSTANCE_NAME", "value": "app"}]}]}},
    ):  # fmt: skip
        if manifest["kind"] == "Pod":  # the token controller fills the account's token Secret first
            deadline = time.monotonic() + 30
            while not (cluster.get("v1", "ServiceAccount", "verify", namespace) or {}).get("secrets"):
                assert time.monotonic() < deadline, "no token Secret for the ServiceAccount verify"
                time.sleep(0.2)
        cluster.apply(manifest, namespace)
    deadline = time.monotonic() + 180
    while (phase := (cluster.get("v1", "Pod", "verify", namespace) or {}).get("status", {}).get("phase")) not in {
        "Succeeded",
        "Failed",
    }:
        assert time.monotonic() < deadline, diagnostics(node, cluster, namespace)
        time.sleep(0.5)
    TIMINGS["test 4: in-cluster verify Pod"] = time.monotonic() - began
    log = cluster.pod_log("verify", namespace)
    assert phase == "Succeeded", log + diagnostics(node, cluster, namespace)
    port = cluster.get("v1", "Service", "app", namespace)["spec"]["ports"][0]["port"]  # type: ignore[index]
    assert f"erlmcp verify: http://app.{namespace}.svc:{port}/mcp" in log  # discovered, not given
    assert re.search(r"(?m)^PASS security\.wrong_credentials_refused ", log), log
    assert re.search(r"(?m)^PASS mcp\.tools_call ", log), log  # with the key read from the app's Secret
    assert re.search(r"(?m)^\d+ passed, 0 failed", log), log


def test_a_server_that_answers_wrong_fails_the_tester_pod_and_the_deployer_reports_it(
    real_cluster: tuple[ControlPlane, Node], cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    plane, node = real_cluster
    provision(cluster, namespace)
    provision_app_account(cluster, namespace)
    # A catalogue (the Marketplace form's field) whose "echo" is another tool: the server starts and is ready, but
    # echo no longer returns the text it is sent, which the tester checks.
    catalogue = "tools:\n  - name: echo\n    description: Not an echo at all.\n    builtin: system_info\n"
    data, data_test = marketplace_data(tmp_path, namespace, catalogYaml=catalogue)
    began = time.monotonic()
    done = marketplace(plane, data, data_test, "--test", "--stable-seconds", "1", "--wait-timeout", "240",
                       "--tester-timeout", "240")  # fmt: skip
    TIMINGS["test 3: deployer marketplace --test, broken server"] = time.monotonic() - began
    assert done.returncode == 1, done.stderr + diagnostics(node, cluster, namespace)
    assert "tester mcp-test: Failed" in done.stderr
    assert "At least 1 test failed or timed out: mcp-test" in done.stderr
    lines = smoke_lines(done.stderr)
    assert any(line.startswith("FAIL mcp.tools_call ") for line in lines), lines
    assert re.fullmatch(r"\d+ passed, [1-9]\d* failed(, \d+ skipped)?", lines[-1]), lines
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Failed"  # type: ignore[index]
