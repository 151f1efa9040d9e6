"""The deployer against a real Kubernetes API server (kube-apiserver 1.20 + etcd + the garbage collector).

Every command runs as a real `python -m deployer` process. No kubelet runs here, so a stand-in thread writes
what a kubelet would: Deployment status (ready replicas) and the tester Pod's phase.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from deployer.cluster import Cluster
from tests.conftest import ROOT
from tests.kube import ControlPlane

pytestmark = pytest.mark.slow
PREFIX = "gcr.io/erlmcp-test/erlmcp"


@pytest.fixture
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    found = Cluster.connect(kubeconfig=control_plane.kubeconfig)
    yield found
    found.close()


_namespaces = iter(range(1, 1000))


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    name = f"t{next(_namespaces)}-{os.getpid()}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, name)
    return name


class KubeletStandIn:
    """Writes what a kubelet and a cloud controller would: Deployments become ready, LoadBalancer Services get
    an address, tester Pods end in ``tester_phase``."""

    def __init__(self, kubeconfig: Path, namespace: str, *, tester_phase: str = "Succeeded") -> None:
        self._cluster = Cluster.connect(kubeconfig=kubeconfig)
        self._namespace = namespace
        self.tester_phase = tester_phase
        self.first_ready_at: float | None = None  # when the Deployment was first made ready (monotonic)
        self.tester_seen_at: float | None = None  # when a tester Pod first existed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KubeletStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._cluster.close()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                self._tick()
            except Exception:
                continue

    def _tick(self) -> None:
        ns = self._namespace
        for deployment in self._cluster.list("apps/v1", "Deployment", ns, labels={}):
            replicas = deployment["spec"].get("replicas", 1)
            if (deployment.get("status") or {}).get("readyReplicas") != replicas:
                self._cluster.patch("apps/v1", "Deployment", deployment["metadata"]["name"], ns, {"status": {
                    "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                    "updatedReplicas": replicas, "observedGeneration": deployment["metadata"]["generation"]}},
                    status=True)  # fmt: skip
                if self.first_ready_at is None:
                    self.first_ready_at = time.monotonic()
        for service in self._cluster.list("v1", "Service", ns, labels={}):
            balancer = (service.get("status") or {}).get("loadBalancer") or {}
            if service["spec"].get("type") == "LoadBalancer" and not balancer.get("ingress"):
                address = {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
                self._cluster.patch("v1", "Service", service["metadata"]["name"], ns, {"status": address}, status=True)
        for pod in self._cluster.list("v1", "Pod", ns, labels={}):
            annotations = pod["metadata"].get("annotations") or {}
            if annotations.get("marketplace.cloud.google.com/verification") == "test" and (pod.get("status") or {}).get(
                "phase"
            ) not in {"Succeeded", "Failed"}:
                if self.tester_seen_at is None:
                    self.tester_seen_at = time.monotonic()
                self._cluster.patch("v1", "Pod", pod["metadata"]["name"], ns,
                                    {"status": {"phase": self.tester_phase}}, status=True)  # fmt: skip


def deployer(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "deployer", *args, "--kubeconfig", str(control_plane.kubeconfig)]
    env = {**os.environ, "PATH": f"{ROOT / '.tools/bin'}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False)


def install(control_plane: ControlPlane, namespace: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return deployer(control_plane, "install", "-n", namespace, "--name", "mcp", "--image-repo-prefix", PREFIX,
                    "-o", "json", *extra)  # fmt: skip


def application(cluster: Cluster, namespace: str, name: str = "mcp") -> dict[str, Any] | None:
    return cluster.get("app.k8s.io/v1beta1", "Application", name, namespace)


def components(cluster: Cluster, namespace: str, name: str = "mcp") -> list[dict[str, Any]]:
    found = []
    for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"), ("v1", "Secret"),
                              ("v1", "ServiceAccount"), ("networking.k8s.io/v1", "NetworkPolicy")):  # fmt: skip
        for item in cluster.list(api_version, kind, namespace, labels={"app.kubernetes.io/name": name}):
            item["kind"] = kind
            found.append(item)
    return found


def test_install_applies_the_application_and_every_component_owned_by_it(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    done = install(control_plane, namespace)
    assert done.returncode == 0, done.stderr
    status = orjson.loads(done.stdout)
    assert status["assemblyPhase"] == "Success"
    app = application(cluster, namespace)
    assert app is not None
    uid = app["metadata"]["uid"]
    found = components(cluster, namespace)
    assert {item["kind"] for item in found} >= {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"}
    for item in found:
        owners = item["metadata"].get("ownerReferences") or []
        assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("Application", "mcp", uid)], item["kind"]
    deployment = next(item for item in found if item["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{PREFIX}:0.1.0"
    assert "applied Deployment mcp" in done.stderr  # progress on stderr, data on stdout


def test_installing_again_converges_and_keeps_the_generated_api_key(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    assert install(control_plane, namespace).returncode == 0
    first = {(i["kind"], i["metadata"]["name"]): i for i in components(cluster, namespace)}
    uid = application(cluster, namespace)["metadata"]["uid"]  # type: ignore[index]
    again = install(control_plane, namespace)
    assert again.returncode == 0, again.stderr
    second = {(i["kind"], i["metadata"]["name"]): i for i in components(cluster, namespace)}
    assert set(second) == set(first)
    assert application(cluster, namespace)["metadata"]["uid"] == uid  # type: ignore[index]
    keys = ("Secret", "mcp-api-keys")
    assert second[keys]["data"] == first[keys]["data"]
    assert (
        second[("Deployment", "mcp")]["metadata"]["generation"]
        == first[("Deployment", "mcp")]["metadata"]["generation"]
    )


@pytest.mark.timeout(300)
def test_install_waits_until_every_component_is_ready_and_stays_ready(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    with KubeletStandIn(control_plane.kubeconfig, namespace):  # type: ignore[arg-type]
        done = install(control_plane, namespace, "--wait", "--timeout", "60", "--stable-seconds", "2")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["ready"] is True
    assert "checking that they stay ready for 2 s" in done.stderr
    status = deployer(control_plane, "status", "-n", namespace, "--name", "mcp", "-o", "json")
    assert status.returncode == 0
    assert {c["kind"] for c in orjson.loads(status.stdout)["components"]} >= {"Deployment", "Service"}


def test_wait_fails_when_a_component_never_gets_ready(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    done = install(control_plane, namespace, "--wait", "--timeout", "3", "--stable-seconds", "1")
    assert done.returncode == 1
    assert "did not get ready before timeout of 3 seconds" in done.stderr
    assert "Deployment mcp: 0/1 replicas ready" in done.stderr
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Failed"  # type: ignore[index]


def block_the_api_keys_secret(cluster: Cluster, namespace: str) -> None:
    """An immutable Secret under the name the chart uses for its API keys: an install's apply stops there."""
    blocker = {"apiVersion": "v1", "kind": "Secret", "immutable": True,
               "metadata": {"name": "mcp-api-keys", "namespace": namespace}, "data": {"x": "eA=="}}  # fmt: skip
    cluster.apply(blocker, namespace)


def test_a_half_way_failure_leaves_the_application_failed_and_a_rerun_succeeds(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    block_the_api_keys_secret(cluster, namespace)
    failed = install(control_plane, namespace)
    assert failed.returncode == 1
    assert "applying Secret mcp-api-keys" in failed.stderr
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Failed"  # type: ignore[index]
    cluster.delete("v1", "Secret", "mcp-api-keys", namespace)
    rerun = install(control_plane, namespace)
    assert rerun.returncode == 0, rerun.stderr
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Success"  # type: ignore[index]


def test_installing_again_deletes_what_the_new_values_no_longer_render(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    assert install(control_plane, namespace, "--set", "replicaCount=2").returncode == 0
    assert cluster.get("policy/v1beta1", "PodDisruptionBudget", "mcp", namespace) is not None  # 1.20: v1beta1
    again = install(control_plane, namespace, "--set", "replicaCount=1")
    assert again.returncode == 0, again.stderr
    assert "deleted PodDisruptionBudget mcp: no longer part of the app" in again.stderr
    assert cluster.get("policy/v1beta1", "PodDisruptionBudget", "mcp", namespace) is None


def test_uninstall_leaves_nothing_behind(control_plane: ControlPlane, cluster: Cluster, namespace: str) -> None:
    assert install(control_plane, namespace, "--set", "replicaCount=2").returncode == 0
    # Something labelled as the app's but not owned by it: the garbage collector would never remove it.
    extra = {"name": "mcp-extra", "namespace": namespace, "labels": {"app.kubernetes.io/name": "mcp"}}
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": extra}, namespace)
    assert components(cluster, namespace)
    done = deployer(control_plane, "uninstall", "-n", namespace, "--name", "mcp", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert application(cluster, namespace) is None
    assert components(cluster, namespace) == []
    assert cluster.get("policy/v1beta1", "PodDisruptionBudget", "mcp", namespace) is None
    again = deployer(control_plane, "uninstall", "-n", namespace, "--name", "mcp")
    assert again.returncode == 0
    assert "nothing to remove" in again.stderr


def test_uninstalling_a_half_installed_app_removes_what_the_failed_apply_made(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    block_the_api_keys_secret(cluster, namespace)
    failed = install(control_plane, namespace)
    assert failed.returncode == 1
    made_before_the_failure = components(cluster, namespace)
    assert made_before_the_failure, "the failed apply made nothing: this test would prove nothing"
    done = deployer(control_plane, "uninstall", "-n", namespace, "--name", "mcp", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    assert application(cluster, namespace) is None
    assert components(cluster, namespace) == []
    # The blocker was never the app's (no ownerReference, no app label): an uninstall leaves it alone.
    assert cluster.get("v1", "Secret", "mcp-api-keys", namespace) is not None


def test_deleting_the_application_garbage_collects_its_components(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    assert install(control_plane, namespace).returncode == 0
    cluster.delete("app.k8s.io/v1beta1", "Application", "mcp", namespace)
    deadline = time.monotonic() + 30
    while components(cluster, namespace) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert components(cluster, namespace) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "replicaCount=many"), "Invalid value for property 'replicaCount'"),
        (("--set", "colour=blue"), "No such property defined in schema: 'colour'"),
        (("--set", "logLevel=LOUD"), "Invalid value for property 'logLevel'"),
    ],
)
def test_bad_values_exit_2_naming_the_property_and_apply_nothing(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, args: tuple[str, ...], message: str
) -> None:
    done = install(control_plane, namespace, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert application(cluster, namespace) is None
    assert components(cluster, namespace) == []


def test_a_missing_required_value_exits_2(control_plane: ControlPlane, cluster: Cluster, namespace: str,
                                          tmp_path: Path) -> None:  # fmt: skip
    schema = yaml.safe_load((ROOT / "schema.yaml").read_text())
    schema["properties"]["owner"] = {"type": "string"}
    schema["required"].append("owner")
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(schema))
    done = install(control_plane, namespace, "--schema", str(tmp_path / "schema.yaml"))
    assert done.returncode == 2
    assert "No value for required property: owner" in done.stderr
    assert application(cluster, namespace) is None


# -- the Marketplace deployer Job -----------------------------------------------------------------------------


def data_dirs(tmp_path: Path, namespace: str) -> tuple[Path, Path]:
    """/data and /data-test as the deployer image lays them out (deployer/Dockerfile builds the same)."""
    data, data_test = tmp_path / "data", tmp_path / "data-test"
    (data / "chart").mkdir(parents=True)
    (data_test / "chart").mkdir(parents=True)
    shutil.copy(ROOT / "schema.yaml", data / "schema.yaml")
    test_schema = (ROOT / "deployer/data-test/schema.yaml").read_text()  # envsubst, as the image build does
    (data_test / "schema.yaml").write_text(test_schema.replace("$REGISTRY", PREFIX).replace("$TAG", "0.1.0"))
    with tarfile.open(data / "chart" / "erlmcp.tar.gz", "w:gz") as archive:
        archive.add(ROOT / "chart", arcname="chart")
    # What provisioning puts in the values: NAME, NAMESPACE, the image prefix, the SERVICE_ACCOUNT it made.
    values = {"name": "mcp", "namespace": namespace, "__image_repo_prefix__": PREFIX,
              "serviceAccount.name": "mcp-serviceaccount"}  # fmt: skip
    (data / "values.yaml").write_text(yaml.safe_dump(values))
    return data, data_test


def provision(cluster: Cluster, namespace: str) -> str:
    """What the Marketplace UI or mpdev makes before the deployer runs: the placeholder Application, the
    deployer's ServiceAccount and the app's (the schema's SERVICE_ACCOUNT property)."""
    placeholder = {"apiVersion": "app.k8s.io/v1beta1", "kind": "Application",
                   "metadata": {"name": "mcp", "namespace": namespace},
                   "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "mcp"}},
                            "assemblyPhase": "Pending"}}  # fmt: skip
    uid = str(cluster.apply(placeholder, namespace)["metadata"]["uid"])
    labels = {"app.kubernetes.io/name": "mcp", "app.kubernetes.io/component": "deployer.marketplace.cloud.google.com"}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "mcp-deployer-sa", "namespace": namespace, "labels": labels},
        },
        namespace,
    )
    return uid


def marketplace(
    control_plane: ControlPlane, data: Path, data_test: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return deployer(control_plane, "marketplace", "--data", str(data), "--data-test", str(data_test), *extra)


def test_the_marketplace_job_installs_next_to_the_placeholder_application(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    uid = provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    done = marketplace(control_plane, data, data_test)
    assert done.returncode == 0, done.stderr
    app = application(cluster, namespace)
    assert app is not None
    assert app["metadata"]["uid"] == uid
    assert app["spec"]["assemblyPhase"] == "Success"
    assert app["spec"]["descriptor"]["version"] == "0.1.0"
    for item in components(cluster, namespace):
        assert [o["uid"] for o in item["metadata"].get("ownerReferences") or []] == [uid], item["kind"]
    assert cluster.get("v1", "ServiceAccount", "mcp-deployer-sa", namespace) is None  # cleaned up, as Google's does
    # The chart makes no ServiceAccount of its own in a Marketplace install: the Pods run as the provisioned one.
    assert cluster.get("v1", "ServiceAccount", "mcp", namespace) is None
    deployment = cluster.get("apps/v1", "Deployment", "mcp", namespace)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mcp-serviceaccount"  # type: ignore[index]
    key = cluster.get("v1", "Secret", "mcp-api-keys", namespace)
    assert len(base64.b64decode(key["data"]["api-keys"]).decode().strip()) == 32  # type: ignore[index]


@pytest.mark.timeout(300)
def test_the_marketplace_test_run_waits_30_seconds_of_readiness_then_runs_the_tester(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    with KubeletStandIn(control_plane.kubeconfig, namespace) as kubelet:  # type: ignore[arg-type]
        done = marketplace(control_plane, data, data_test, "--test", "--wait-timeout", "120", "--tester-timeout", "60")
    assert done.returncode == 0, done.stderr
    # The official rule: every component ready, and still ready 30 s later, before the tester starts.
    assert kubelet.first_ready_at is not None
    assert kubelet.tester_seen_at is not None
    assert kubelet.tester_seen_at - kubelet.first_ready_at >= 30
    assert "tester mcp-test: Succeeded" in done.stderr
    # Tester output starts its lines with SMOKE_TEST: mpdev verify greps for that into tester.log.
    assert re.search(r"(?m)^SMOKE_TEST mcp-test: ", done.stderr)
    assert cluster.get("v1", "Pod", "mcp-test", namespace) is None  # testers are deleted afterwards
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Success"  # type: ignore[index]


@pytest.mark.timeout(300)
def test_a_failing_tester_fails_the_test_run_and_the_application(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    with KubeletStandIn(control_plane.kubeconfig, namespace, tester_phase="Failed"):  # type: ignore[arg-type]
        done = marketplace(control_plane, data, data_test, "--test", "--stable-seconds", "1",
                           "--wait-timeout", "60", "--tester-timeout", "60")  # fmt: skip
    assert done.returncode == 1
    assert "At least 1 test failed or timed out: mcp-test" in done.stderr
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Failed"  # type: ignore[index]


def test_the_marketplace_job_refuses_a_schema_that_breaks_a_rule_before_touching_the_cluster(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    schema["x-google-marketplace"]["publishedVersion"] = "1.0"
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    done = marketplace(control_plane, data, data_test)
    assert done.returncode == 2
    assert "publishedVersion '1.0' must be a full semantic version" in done.stderr
    assert [i["metadata"]["name"] for i in components(cluster, namespace)] == ["mcp-deployer-sa"]  # provisioned
    # The names cannot be read from a broken schema, so the placeholder is left as it was (Pending).
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Pending"  # type: ignore[index]


def test_a_bad_value_in_the_marketplace_job_exits_2_and_marks_the_application_failed(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    values = yaml.safe_load((data / "values.yaml").read_text())
    (data / "values.yaml").write_text(yaml.safe_dump({**values, "replicaCount": "many"}))
    done = marketplace(control_plane, data, data_test)
    assert done.returncode == 2
    assert "Invalid value for property 'replicaCount'" in done.stderr
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Failed"  # type: ignore[index]
    assert [i["metadata"]["name"] for i in components(cluster, namespace)] == ["mcp-deployer-sa"]
