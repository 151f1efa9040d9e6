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

from deployer.errors import HelmError
from deployer.marketplace.cluster import Cluster
from deployer.marketplace.helm import KubeTarget, helm_template
from deployer.marketplace.schema import load_schema
from tests.conftest import ROOT, free_port
from tests.kube import ControlPlane

pytestmark = pytest.mark.slow
PREFIX = "gcr.io/erlmcp-test/erlmcp"
VERSION = load_schema(ROOT / "schema.yaml").published_version


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


def deployer(
    control_plane: ControlPlane, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "deployer", *args, "--kubeconfig", str(kubeconfig or control_plane.kubeconfig)]
    env = {**os.environ, "PATH": f"{ROOT / '.tools/bin'}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False)


def install(
    control_plane: ControlPlane, namespace: str, *extra: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return deployer(control_plane, "install", "-n", namespace, "--name", "mcp", "--image-repo-prefix", PREFIX,
                    "-o", "json", *extra, kubeconfig=kubeconfig)  # fmt: skip


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
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{PREFIX}:{VERSION}"
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
    assert (
        install(control_plane, namespace, "--set", "replicaCount=2", "--set", "sessions.store=stateless").returncode
        == 0
    )
    assert cluster.get("policy/v1beta1", "PodDisruptionBudget", "mcp", namespace) is not None  # 1.20: v1beta1
    again = install(control_plane, namespace, "--set", "replicaCount=1", "--set", "sessions.store=stateless")
    assert again.returncode == 0, again.stderr
    assert "deleted PodDisruptionBudget mcp: no longer part of the app" in again.stderr
    assert cluster.get("policy/v1beta1", "PodDisruptionBudget", "mcp", namespace) is None


def test_uninstall_leaves_nothing_behind(control_plane: ControlPlane, cluster: Cluster, namespace: str) -> None:
    assert (
        install(control_plane, namespace, "--set", "replicaCount=2", "--set", "sessions.store=stateless").returncode
        == 0
    )
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
    """/data and /data-test as the deployer image lays them out (the Dockerfile's deployer target builds the same)."""
    data, data_test = tmp_path / "data", tmp_path / "data-test"
    (data / "chart").mkdir(parents=True)
    (data_test / "chart").mkdir(parents=True)
    shutil.copy(ROOT / "schema.yaml", data / "schema.yaml")
    test_schema = (ROOT / "deployer/data-test/schema.yaml").read_text()  # envsubst, as the image build does
    (data_test / "schema.yaml").write_text(test_schema.replace("$REGISTRY", PREFIX).replace("$TAG", VERSION))
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
    assert app["spec"]["descriptor"]["version"] == VERSION
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


# -- what the chart generates and keeps on upgrade (its lookups read the cluster) -----------------------------
#
# The chart makes the request-state key (Secret mcp-state) and, with serverTls.enabled, a CA and a certificate
# (Secret mcp-server-tls) itself, and keeps those of an earlier install through Helm's lookup. The deployer renders
# with Helm's server dry-run so those lookups read the cluster it installs into; a plain helm template would find
# nothing and make new ones on every run.

STATE_SECRET, TLS_SECRET = "mcp-state", "mcp-server-tls"
TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")


def secret_data(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    found = cluster.get("v1", "Secret", name, namespace)
    assert found is not None, f"there is no Secret {name} in {namespace}"
    return dict(found["data"])


def generated(cluster: Cluster, namespace: str, *, tls: bool) -> dict[str, str]:
    """What the chart generated, by Secret and key (the raw base64 data: equal means equal byte for byte)."""
    found = {"state": secret_data(cluster, namespace, STATE_SECRET)["erlmcp_request_state_key"]}
    if tls:
        data = secret_data(cluster, namespace, TLS_SECRET)
        found |= {key: data[key] for key in TLS_KEYS}
    return found


def set_values(data: Path, **values: Any) -> None:
    """Change the Marketplace values the deployer Job reads (flat property names)."""
    path = data / "values.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **values}))


def deployment_env(cluster: Cluster, namespace: str) -> dict[str, Any]:
    deployment = cluster.get("apps/v1", "Deployment", "mcp", namespace)
    assert deployment is not None
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_two_marketplace_runs_keep_the_request_state_key(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    first = marketplace(control_plane, data, data_test)
    assert first.returncode == 0, first.stderr
    before = generated(cluster, namespace, tls=False)
    assert len(base64.b64decode(before["state"])) == 48
    again = marketplace(control_plane, data, data_test)
    assert again.returncode == 0, again.stderr
    assert generated(cluster, namespace, tls=False) == before
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Success"  # type: ignore[index]


def test_two_marketplace_runs_with_server_tls_keep_the_ca_certificate_and_key(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    set_values(data, **{"serverTls.enabled": True})
    first = marketplace(control_plane, data, data_test)
    assert first.returncode == 0, first.stderr
    before = generated(cluster, namespace, tls=True)
    assert base64.b64decode(before["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")
    again = marketplace(control_plane, data, data_test)
    assert again.returncode == 0, again.stderr
    assert generated(cluster, namespace, tls=True) == before


def test_a_marketplace_upgrade_that_changes_another_value_keeps_the_generated_key_and_certificate(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    set_values(data, **{"serverTls.enabled": True, "logLevel": "INFO"})
    first = marketplace(control_plane, data, data_test)
    assert first.returncode == 0, first.stderr
    before = generated(cluster, namespace, tls=True)
    set_values(data, logLevel="DEBUG")
    upgrade = marketplace(control_plane, data, data_test)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "DEBUG" in deployment_env(cluster, namespace).values()  # the upgrade did change the app
    assert generated(cluster, namespace, tls=True) == before


def test_installing_twice_keeps_the_request_state_key_and_the_server_certificate(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    first = install(control_plane, namespace, "--set", "serverTls.enabled=true")
    assert first.returncode == 0, first.stderr
    before = generated(cluster, namespace, tls=True)
    generation = cluster.get("apps/v1", "Deployment", "mcp", namespace)["metadata"]["generation"]  # type: ignore[index]
    again = install(control_plane, namespace, "--set", "serverTls.enabled=true")
    assert again.returncode == 0, again.stderr
    assert generated(cluster, namespace, tls=True) == before
    # Nothing changed, so nothing rolls: the Pods keep running with the key and certificate they have.
    assert cluster.get("apps/v1", "Deployment", "mcp", namespace)["metadata"]["generation"] == generation  # type: ignore[index]


def test_an_install_upgrade_that_changes_another_value_keeps_the_generated_key_and_certificate(
    control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    first = install(control_plane, namespace, "--set", "serverTls.enabled=true")
    assert first.returncode == 0, first.stderr
    before = generated(cluster, namespace, tls=True)
    upgrade = install(control_plane, namespace, "--set", "serverTls.enabled=true", "--set", "logLevel=DEBUG")
    assert upgrade.returncode == 0, upgrade.stderr
    assert "DEBUG" in deployment_env(cluster, namespace).values()
    assert generated(cluster, namespace, tls=True) == before


def with_a_dead_current_context(control_plane: ControlPlane, tmp_path: Path) -> Path:
    """The control plane's kubeconfig with a second context, made current, for a server that is not there; the
    live one is context ``local``."""
    config = yaml.safe_load(control_plane.kubeconfig.read_text())  # type: ignore[union-attr]
    config["clusters"].append({"name": "gone", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}})
    config["contexts"].append({"name": "gone", "context": {"cluster": "gone", "user": "admin"}})
    config["current-context"] = "gone"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_helm_reads_the_cluster_of_the_context_the_deployer_was_given(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = with_a_dead_current_context(control_plane, tmp_path)
    first = install(control_plane, namespace, "--context", "local", kubeconfig=kubeconfig)
    assert first.returncode == 0, first.stderr
    before = generated(cluster, namespace, tls=False)
    again = install(control_plane, namespace, "--context", "local", kubeconfig=kubeconfig)
    assert again.returncode == 0, again.stderr
    assert generated(cluster, namespace, tls=False) == before


def account_kubeconfig(control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path,
                       name: str, rules: list[dict[str, Any]]) -> Path:  # fmt: skip
    """A kubeconfig that acts as a new ServiceAccount ``name`` granted only ``rules`` in ``namespace``."""
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
    cluster.apply(account, namespace)
    if rules:
        rbac = "rbac.authorization.k8s.io"
        cluster.apply({"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": {"name": name, "namespace": namespace},
                       "rules": rules}, namespace)  # fmt: skip
        cluster.apply({"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
                       "metadata": {"name": name, "namespace": namespace},
                       "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
                       "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]},
                      namespace)  # fmt: skip
    config = yaml.safe_load(control_plane.kubeconfig.read_text())  # type: ignore[union-attr]
    config["users"] = [{"name": "admin", "user": {"token": service_account_token(cluster, name, namespace)}}]
    path = tmp_path / f"kubeconfig-{name}"
    path.write_text(yaml.safe_dump(config))
    return path


def service_account_token(cluster: Cluster, name: str, namespace: str) -> str:
    """The token of ServiceAccount ``name``, from the Secret the token controller makes for it (Kubernetes 1.20)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for ref in (cluster.get("v1", "ServiceAccount", name, namespace) or {}).get("secrets") or []:
            token = ((cluster.get("v1", "Secret", ref["name"], namespace) or {}).get("data") or {}).get("token")
            if token:
                return base64.b64decode(token).decode()
        time.sleep(0.2)
    raise AssertionError(f"no token for ServiceAccount {name} within 30 s")


def test_helm_needs_only_get_on_secrets_to_keep_what_the_chart_generated(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path, helm: str
) -> None:
    assert install(control_plane, namespace, "--set", "serverTls.enabled=true").returncode == 0
    before = generated(cluster, namespace, tls=True)
    kubeconfig = account_kubeconfig(control_plane, cluster, namespace, tmp_path, "secret-getter",
                                    [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])  # fmt: skip
    values = {"serverTls": {"enabled": True}}
    text = helm_template(helm, ROOT / "chart", release="mcp", namespace=namespace, values=values,
                         cluster=KubeTarget(kubeconfig=kubeconfig))  # fmt: skip
    secrets = {d["metadata"]["name"]: d["data"] for d in yaml.safe_load_all(text) if d and d["kind"] == "Secret"}
    assert secrets[STATE_SECRET]["erlmcp_request_state_key"] == before["state"]
    assert {key: secrets[TLS_SECRET][key] for key in TLS_KEYS} == {key: before[key] for key in TLS_KEYS}


def test_helm_refused_the_secrets_says_which_permission_is_missing(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path, helm: str
) -> None:
    kubeconfig = account_kubeconfig(control_plane, cluster, namespace, tmp_path, "no-rights", [])
    with pytest.raises(HelmError) as refused:
        helm_template(helm, ROOT / "chart", release="mcp", namespace=namespace, values={},
                      cluster=KubeTarget(kubeconfig=kubeconfig))  # fmt: skip
    message = str(refused.value)
    assert f"the account needs get on the objects the chart looks up in namespace {namespace}" in message
    assert 'cannot get resource "secrets"' in message  # Helm's own error says which
    assert "Use --debug flag" not in message


def test_helm_that_cannot_reach_the_cluster_says_so(control_plane: ControlPlane, tmp_path: Path, helm: str) -> None:
    kubeconfig = with_a_dead_current_context(control_plane, tmp_path)
    with pytest.raises(HelmError) as unreachable:
        helm_template(helm, ROOT / "chart", release="mcp", namespace="ns", values={},
                      cluster=KubeTarget(kubeconfig=kubeconfig))  # fmt: skip
    message = str(unreachable.value)
    assert "Helm cannot read the Kubernetes cluster" in message
    assert "connection refused" in message
    assert "[ERROR]" not in message  # Helm's log lines are left out; its error stays


def in_cluster_marketplace(control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path,
                           data: Path, data_test: Path) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The deployer Job as it runs in its Pod: no kubeconfig and no ~/.kube, KUBERNETES_SERVICE_HOST and _PORT
    set, and the deployer ServiceAccount's token, the cluster's CA and the namespace at
    /var/run/secrets/kubernetes.io/serviceaccount (bubblewrap mounts them over a tmpfs /run; the rest of this
    machine is seen as it is). The account is bound to cluster-admin in the namespace, as Marketplace does."""
    labels = {"app.kubernetes.io/name": "mcp", "app.kubernetes.io/component": "deployer.marketplace.cloud.google.com"}
    account = {"name": "mcp-deployer-sa", "namespace": namespace, "labels": labels}
    cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account}, namespace)  # a run deletes it
    rbac = "rbac.authorization.k8s.io"
    cluster.apply({"apiVersion": f"{rbac}/v1", "kind": "RoleBinding",
                   "metadata": {"name": "mcp-deployer-rb", "namespace": namespace},
                   "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "ServiceAccount", "name": "mcp-deployer-sa", "namespace": namespace}]},
                  namespace)  # fmt: skip
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir(exist_ok=True)
    (mounted / "token").write_text(service_account_token(cluster, "mcp-deployer-sa", namespace))
    shutil.copy(control_plane.pki / "ca.crt", mounted / "ca.crt")
    (mounted / "namespace").write_text(namespace)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key != "KUBECONFIG" and not key.startswith("HELM_")}
    env |= {"HOME": str(home), "PATH": f"{ROOT / '.tools/bin'}{os.pathsep}{os.environ['PATH']}",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(control_plane.api_port)}  # fmt: skip
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.fail("bwrap is not installed: run scripts/install-bubblewrap.sh (make test-services does)")
    user = [] if os.geteuid() == 0 else ["--unshare-user"]  # mounts need root, or a user namespace
    sandbox = [bwrap, *user, "--bind", "/", "/", "--tmpfs", "/run", "--ro-bind", str(mounted),
               "/run/secrets/kubernetes.io/serviceaccount", "--chdir", str(ROOT), "--"]  # fmt: skip
    command = [*sandbox, sys.executable, "-m", "deployer", "marketplace", "--data", str(data), "--data-test",
               str(data_test)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_the_marketplace_job_in_its_pod_keeps_what_the_chart_generated(
    control_plane: ControlPlane, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    provision(cluster, namespace)
    data, data_test = data_dirs(tmp_path, namespace)
    set_values(data, **{"serverTls.enabled": True})
    first = in_cluster_marketplace(control_plane, cluster, namespace, tmp_path, data, data_test)
    assert first.returncode == 0, first.stderr
    assert application(cluster, namespace)["spec"]["assemblyPhase"] == "Success"  # type: ignore[index]
    before = generated(cluster, namespace, tls=True)
    again = in_cluster_marketplace(control_plane, cluster, namespace, tmp_path, data, data_test)
    assert again.returncode == 0, again.stderr
    assert generated(cluster, namespace, tls=True) == before
