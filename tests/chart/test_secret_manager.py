"""``secretManager.enabled``: the API key file comes from Google Secret Manager through GKE's Secret Manager add-on
(CSI driver ``secrets-store-gke.csi.k8s.io``), mounted where the chart's own Secret would be, so the server reads and
watches the same file; off (the default), nothing changes. The SecretProviderClass is checked against the published
CRD; what the add-on reads in its parameters, and the mount itself, only GKE can run (see tests/chart/crds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deployer.gcp.cloudrun import closed_schema
from tests.chart.rendering import refusal, render

pytestmark = pytest.mark.slow

CRD = Path(__file__).parent / "crds" / "secrets-store-csi-driver-v1.6.0-secretproviderclasses.yaml"
ON = ("secretManager.enabled=true", "secretManager.project=acme-mcp-1")


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def pod_spec(documents: list[dict[str, Any]], kind: str = "Deployment") -> dict[str, Any]:
    [found] = of_kind(documents, kind)
    spec: dict[str, Any] = found["spec"]["template"]["spec"] if kind == "Deployment" else found["spec"]
    return spec


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in spec["volumes"] if v["name"] == name]
    assert len(found) == 1, found
    return found[0]


def crd_validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(closed_schema(version["schema"]["openAPIV3Schema"]))


def test_off_by_default_the_key_file_is_the_charts_secret_and_no_provider_class_is_rendered(helm: str) -> None:
    documents = render(helm)
    assert of_kind(documents, "SecretProviderClass") == []
    assert volume(pod_spec(documents), "api-keys") == {
        "name": "api-keys",
        "secret": {"secretName": "r1-api-keys", "defaultMode": 0o440},
    }  # (group: fsGroup 1000)
    # The test Pod has no fsGroup: its key file keeps the default mode, readable by its user.
    assert volume(pod_spec(documents, "Pod"), "api-keys") == {
        "name": "api-keys",
        "secret": {"secretName": "r1-api-keys"},
    }
    assert [s["metadata"]["name"] for s in of_kind(documents, "Secret") if s["metadata"]["name"] == "r1-api-keys"]


def test_on_the_key_file_is_mounted_from_secret_manager_through_the_gke_add_on(helm: str) -> None:
    documents = render(helm, *ON)
    [provider] = of_kind(documents, "SecretProviderClass")
    assert list(crd_validator().iter_errors(provider)) == []
    assert (provider["apiVersion"], provider["metadata"]["name"]) == (
        "secrets-store.csi.x-k8s.io/v1",
        "r1-secret-manager",
    )
    assert provider["spec"]["provider"] == "gke"
    assert yaml.safe_load(provider["spec"]["parameters"]["secrets"]) == [
        {"resourceName": "projects/acme-mcp-1/secrets/erlmcp-api-keys/versions/latest", "path": "api-keys"}
    ]
    for spec in (pod_spec(documents), pod_spec(documents, "Pod")):  # the server and the chart's test Pod
        assert volume(spec, "api-keys") == {
            "name": "api-keys",
            "csi": {"driver": "secrets-store-gke.csi.k8s.io", "readOnly": True,
                    "volumeAttributes": {"secretProviderClass": "r1-secret-manager"}},
        }  # fmt: skip
    server = pod_spec(documents)["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert (env["ERLMCP_API_KEY_FILE"], mounts["api-keys"]) == ("/etc/erlmcp/secrets/api-keys", "/etc/erlmcp/secrets")
    # The add-on reads the secret as the Pod's service account: the test Pod runs as the server's.
    assert pod_spec(documents, "Pod")["serviceAccountName"] == pod_spec(documents)["serviceAccountName"]
    # No key of the chart's own: it is in Secret Manager, and the Application says where.
    assert "r1-api-keys" not in [s["metadata"]["name"] for s in of_kind(documents, "Secret")]
    [application] = of_kind(documents, "Application")
    assert {"group": "secrets-store.csi.x-k8s.io", "kind": "SecretProviderClass"} in application["spec"][
        "componentKinds"
    ]
    info = {i["name"]: i for i in application["spec"]["info"]}
    assert info["API key (in Secret Manager)"]["value"] == "projects/acme-mcp-1/secrets/erlmcp-api-keys/versions/latest"


def test_a_chosen_secret_and_version_are_the_ones_mounted(helm: str) -> None:
    documents = render(helm, *ON, "secretManager.apiKeysSecret=mcp-keys", "secretManager.version=3")
    [provider] = of_kind(documents, "SecretProviderClass")
    [secret] = yaml.safe_load(provider["spec"]["parameters"]["secrets"])
    assert secret["resourceName"] == "projects/acme-mcp-1/secrets/mcp-keys/versions/3"


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        (("secretManager.enabled=true",), "needs secretManager.project"),
        ((*ON, "auth.apiKey=0123456789abcdef0123"), "leave auth.apiKey and auth.existingSecret empty"),
        ((*ON, "auth.existingSecret=mine"), "leave auth.apiKey and auth.existingSecret empty"),
        ((*ON, "auth.enabled=false"), "auth.enabled=false uses none"),
        ((*ON, "secretManager.version=newest"), "secretManager.version"),
        ((*ON, "secretManager.version=0"), "secretManager.version"),  # (--set makes it an integer)
        ((*ON, "secretManager.version=-2"), "secretManager.version"),
        ((*ON, "secretManager.apiKeysSecret=a/b"), "secretManager.apiKeysSecret"),
    ],
)
def test_values_that_cannot_mount_the_key_are_refused_saying_why(helm: str, sets: tuple[str, ...], reason: str) -> None:
    assert reason in refusal(helm, *sets)
