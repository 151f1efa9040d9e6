"""Rendering the real chart with the real Helm, through the deployer."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from deployer.errors import HelmError, ValuesError
from deployer.marketplace.helm import find_helm, helm_template
from deployer.marketplace.manifests import find_one
from deployer.marketplace.render import Rendered, render
from deployer.marketplace.schema import load_schema
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

BASE = {"name": "mcp1", "namespace": "ns1", "__image_repo_prefix__": "gcr.io/acme/erlmcp"}


def rendered(helm: str, **values: Any) -> Rendered:
    return render(load_schema(ROOT / "schema.yaml"), {**BASE, **values}, chart=ROOT / "chart", helm=helm)


def container(result: Rendered) -> dict[str, Any]:
    spec: dict[str, Any] = find_one(result.manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return spec


def test_the_release_name_namespace_and_image_come_from_the_values(helm: str) -> None:
    result = rendered(helm)
    deployment = find_one(result.manifests, "Deployment")
    assert (deployment["metadata"]["name"], deployment["metadata"]["namespace"]) == ("mcp1", "ns1")
    assert container(result)["image"] == "gcr.io/acme/erlmcp:0.2.0"


def test_every_object_is_labelled_with_the_release_name_for_the_application(helm: str) -> None:
    result = rendered(helm)
    assert all(m["metadata"]["labels"]["app.kubernetes.io/name"] == "mcp1" for m in result.manifests)


def test_the_application_names_every_kind_the_chart_creates(helm: str) -> None:
    result = rendered(helm)
    application = find_one(result.manifests, "Application")
    kinds = {component["kind"] for component in application["spec"]["componentKinds"]}
    hooks = [m for m in result.manifests if "helm.sh/hook" in (m["metadata"].get("annotations") or {})]
    assert kinds == {m["kind"] for m in result.manifests if m not in hooks} - {"Application"}
    assert application["spec"]["descriptor"]["version"] == load_schema(ROOT / "schema.yaml").published_version
    assert "partner_id" in application["metadata"]["annotations"]["marketplace.cloud.google.com/deploy-info"]
    icon = application["metadata"]["annotations"]["kubernetes-engine.cloud.google.com/icon"]
    assert base64.b64decode(icon.removeprefix("data:image/png;base64,")).startswith(b"\x89PNG")


def test_the_api_key_reaches_the_secret_the_pod_mounts(helm: str) -> None:
    result = rendered(helm, **{"auth.apiKey": "key-from-values-123"})
    secret = find_one(result.manifests, "Secret", "mcp1-api-keys")
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "key-from-values-123"
    env = {e["name"]: e.get("value") for e in container(result)["env"]}
    assert env["ERLMCP_API_KEY_FILE"] == "/etc/erlmcp/secrets/api-keys"


def test_turning_auth_off_renders_no_secret_and_tells_the_server(helm: str) -> None:
    result = rendered(helm, **{"auth.enabled": False})
    assert not [m for m in result.manifests if m["kind"] == "Secret" and m["metadata"]["name"] == "mcp1-api-keys"]
    env = {e["name"]: e.get("value") for e in container(result)["env"]}
    assert env["ERLMCP_NO_AUTH"] == "true"
    assert "ERLMCP_API_KEY_FILE" not in env


def test_the_pod_runs_hardened_as_the_seed_design_asks(helm: str) -> None:
    result = rendered(helm)
    pod = find_one(result.manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    security = container(result)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container(result)["volumeMounts"]}
    assert {"/tmp", "/var/run"} <= mounts
    assert pod["automountServiceAccountToken"] is False


def test_ports_8080_and_9090_are_exposed_and_probed(helm: str) -> None:
    result = rendered(helm)
    ports = {p["name"]: p["containerPort"] for p in container(result)["ports"]}
    assert ports == {"http": 8080, "metrics": 9090}
    assert container(result)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mcp = find_one(result.manifests, "Service", "mcp1")
    metrics = find_one(result.manifests, "Service", "mcp1-metrics")
    assert ([p["port"] for p in mcp["spec"]["ports"]], [p["port"] for p in metrics["spec"]["ports"]]) == (
        [8080],
        [9090],
    )


def test_helm_refuses_values_the_chart_schema_does_not_know(helm: str) -> None:
    with pytest.raises(ValuesError, match="typo"):
        helm_template(helm, ROOT / "chart", release="r", namespace="n", values={"typo": 1})


def test_a_missing_helm_is_reported_with_how_to_install_it() -> None:
    with pytest.raises(HelmError, match="make setup"):
        find_helm("/nonexistent/helm")


def test_a_null_api_key_gets_a_generated_one_not_the_text_nil(helm: str) -> None:
    text = helm_template(helm, ROOT / "chart", release="r", namespace="n", values={"auth": {"apiKey": None}})
    secret = next(d for d in yaml.safe_load_all(text) if d and d["metadata"]["name"] == "r-api-keys")
    key = base64.b64decode(secret["data"]["api-keys"]).decode()
    assert key != "<nil>"
    assert len(key) == 32


def test_equal_mcp_and_metrics_ports_are_refused_at_render(helm: str) -> None:
    with pytest.raises(ValuesError, match="must differ"):
        rendered(helm, **{"service.port": 9090, "service.metricsPort": 9090})


def test_changing_the_api_key_changes_the_pod_template(helm: str) -> None:
    def annotations(key: str) -> dict[str, str]:
        pod = find_one(rendered(helm, **{"auth.apiKey": key}).manifests, "Deployment")["spec"]["template"]
        return dict(pod["metadata"]["annotations"])

    assert annotations("first-key-0123456789") != annotations("second-key-0123456789")


def test_an_existing_api_key_secret_is_mounted_instead_of_a_new_one(helm: str) -> None:
    text = helm_template(helm, ROOT / "chart", release="r", namespace="n",
                         values={"auth": {"existingSecret": "keys-from-elsewhere"}})  # fmt: skip
    documents = [d for d in yaml.safe_load_all(text) if d]
    assert not [d for d in documents if d["kind"] == "Secret" and d["metadata"]["name"] == "r-api-keys"]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "keys-from-elsewhere"


def test_a_catalogue_document_from_the_form_replaces_the_default_catalogue(helm: str) -> None:
    document = "tools:\n  - {name: hello, description: Says hello, builtin: echo}\n"
    config = find_one(rendered(helm, catalogYaml=document).manifests, "ConfigMap")
    assert yaml.safe_load(config["data"]["catalog.yaml"]) == {
        "tools": [{"name": "hello", "description": "Says hello", "builtin": "echo"}]
    }


def test_a_catalogue_document_that_is_not_yaml_is_refused_at_render(helm: str) -> None:
    with pytest.raises(ValuesError, match="catalogYaml is not a YAML mapping"):
        rendered(helm, catalogYaml="tools: [")


def test_bearer_tokens_cors_and_trusted_proxies_reach_the_server(helm: str) -> None:
    jwt = {"jwksUrl": "https://idp.example/jwks", "issuer": "https://idp.example",
           "resourceUrl": "https://mcp.example", "authorizationServers": ["https://idp.example"]}  # fmt: skip
    values = {"jwt": jwt, "cors": {"origins": ["https://app.example"]},
              "rateLimit": {"trustedProxies": ["130.211.0.0/22"]}}  # fmt: skip
    text = helm_template(helm, ROOT / "chart", release="mcp", namespace="apps", values=values)
    env = {e["name"]: e.get("value") for e in find_one(list(yaml.safe_load_all(text)), "Deployment")["spec"]["template"]
           ["spec"]["containers"][0]["env"]}  # fmt: skip
    assert env["ERLMCP_JWT_JWKS_URL"] == "https://idp.example/jwks"
    assert env["ERLMCP_RESOURCE_URL"] == "https://mcp.example"
    assert env["ERLMCP_CORS_ORIGINS"] == "https://app.example"
    assert env["ERLMCP_TRUSTED_PROXIES"] == "130.211.0.0/22"


def test_a_jwks_url_without_an_issuer_is_refused_at_render(helm: str) -> None:
    jwt = {"jwksUrl": "https://idp.example/jwks", "resourceUrl": "https://mcp.example"}
    with pytest.raises(ValuesError, match="jwt.issuer is required"):
        helm_template(helm, ROOT / "chart", release="mcp", namespace="apps", values={"jwt": jwt})
