"""Every chart/ci/*-values.yaml scenario, rendered with real Helm: valid for Kubernetes 1.30 to 1.35, restricted
Pod Security, and the Marketplace deployer's invariants."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import SCENARIOS, values_of
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

KUBE_VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0", "1.35.0"]
# Custom resources: kubernetes-validate has no schema for them (the test below checks them another way).
CUSTOM_KINDS = {"Application", "PodMonitoring", "ServiceMonitor", "ManagedCertificate"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass",
                  "PriorityClass", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}  # fmt: skip


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (a template that writes a label twice)."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    keys = [loader.construct_object(key, deep=deep) for key, _ in node.value]
    duplicates = sorted({str(k) for k in keys if keys.count(k) > 1})
    if duplicates:
        raise AssertionError(f"duplicate keys in the rendered YAML: {duplicates}")
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def render(helm: str, scenario: Path, kube_version: str = "1.30.0") -> list[dict[str, Any]]:
    result = subprocess.run(
        [helm, "template", "r1", str(ROOT / "chart"), "--namespace", "ns1", "-f", str(scenario),
         "--kube-version", kube_version],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [doc for doc in yaml.load_all(result.stdout, Loader=_StrictLoader) if doc]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_each_scenario_passes_kubernetes_validate_strict_for_1_30_to_1_35(
    helm: str, scenario: Path, tmp_path: Path
) -> None:
    for version in KUBE_VERSIONS:
        documents = render(helm, scenario, version)
        out = tmp_path / f"{version}.yaml"
        out.write_text(yaml.safe_dump_all(documents))
        result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", version, "--strict", str(out)],
                                capture_output=True, text=True)  # fmt: skip
        assert result.returncode == 0, f"{version}: {result.stdout}{result.stderr}"
        builtin = [d for d in documents if d["kind"] not in CUSTOM_KINDS]
        assert result.stdout.count(" passed for resource ") == len(builtin), f"{version}: {result.stdout}"


def pod_specs(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in documents:
        if doc["kind"] == "Pod":
            specs.append((f"Pod/{doc['metadata']['name']}", doc["spec"]))
        elif doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            specs.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]))
    return specs


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                   "secret"}  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_every_pod_meets_the_restricted_pod_security_standard(helm: str, scenario: Path) -> None:
    """A port of the 'restricted' profile's checks (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    for where, spec in pod_specs(render(helm, scenario)):
        pod_context = spec.get("securityContext") or {}
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_namespace), f"{where}: {host_namespace}"
        for volume in spec.get("volumes") or []:
            assert set(volume) - {"name"} <= ALLOWED_VOLUMES, f"{where}: volume {volume}"
        for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
            context = container.get("securityContext") or {}
            name = f"{where}/{container['name']}"
            assert context.get("privileged") is not True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert (context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))) is True, name
            assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0, name
            seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
            assert seccomp in {"RuntimeDefault", "Localhost"}, name
            capabilities = context.get("capabilities") or {}
            assert capabilities.get("drop") == ["ALL"], name
            assert set(capabilities.get("add") or []) <= {"NET_BIND_SERVICE"}, name
            assert not container.get("ports") or all("hostPort" not in p for p in container["ports"]), name


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_the_render_keeps_the_marketplace_deployers_invariants(helm: str, scenario: Path) -> None:
    documents = render(helm, scenario)
    applications = [d for d in documents if d["kind"] == "Application"]
    assert len(applications) == 1
    hooks = [d for d in documents if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]
    assert all(d["metadata"]["annotations"]["helm.sh/hook"] == "test" for d in hooks)
    listed = {component["kind"] for component in applications[0]["spec"]["componentKinds"]}
    created = {d["kind"] for d in documents if d not in hooks and d["kind"] != "Application"}
    assert created == listed, f"created {sorted(created)} but componentKinds lists {sorted(listed)}"
    assert all(d["metadata"]["labels"]["app.kubernetes.io/name"] == "r1" for d in documents)
    values = values_of(scenario)
    # Every image comes from values a schema.yaml image projects (the tester's from the test schema).
    redis = values["sessions"]["redis"]["image"]
    allowed_images = {f"{values['image']['repository']}:{values['image']['tag']}",
                      f"{values['tester']['image']['repository']}:{values['tester']['image']['tag']}",
                      f"{redis['repository']}:{redis['tag']}"}  # fmt: skip
    for _, spec in pod_specs(documents):
        assert {c["image"] for c in spec["containers"]} <= allowed_images
    if values["serviceAccount"]["name"]:  # Marketplace mode: it provisions the ServiceAccount
        assert not [d for d in documents if d["kind"] == "ServiceAccount" or d["kind"] in CLUSTER_SCOPED]


def test_older_clusters_get_the_api_versions_they_have(helm: str) -> None:
    autoscaled = ROOT / "chart" / "ci" / "autoscaling-values.yaml"
    old = {d["kind"]: d["apiVersion"] for d in render(helm, autoscaled, "1.20.0")}
    new = {d["kind"]: d["apiVersion"] for d in render(helm, autoscaled, "1.30.0")}
    assert (old["HorizontalPodAutoscaler"], new["HorizontalPodAutoscaler"]) == ("autoscaling/v2beta2", "autoscaling/v2")
    assert (old["PodDisruptionBudget"], new["PodDisruptionBudget"]) == ("policy/v1beta1", "policy/v1")


@pytest.mark.parametrize(
    ("value", "message"),
    [("replicaCount=two", "replicaCount"), ("autoscaling.enabled=maybe", "autoscaling.enabled"),
     ("sessions.external.url=http://x", "sessions.external.url"), ("topologySpread.typo=1", "typo")],
)  # fmt: skip
def test_the_values_schema_rejects_wrong_types_and_unknown_keys_clearly(helm: str, value: str, message: str) -> None:
    result = subprocess.run(
        [helm, "template", "r1", str(ROOT / "chart"), "--set", value], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert message in result.stderr
