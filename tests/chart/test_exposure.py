"""Who can reach the server from outside the cluster: `exposure` decides, nothing else does, and it never puts
plaintext or an unauthenticated endpoint on a public address."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from deployer.marketplace.certificates import self_signed_certificate
from deployer.marketplace.render import render as deployer_render
from deployer.marketplace.schema import load_schema
from tests.chart.rendering import SCENARIOS, refusal, render
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

PEM = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
KEY = base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n").decode()
MARKETPLACE_CERTIFICATE = (f"tls.base64EncodedCertificate={PEM}", f"tls.base64EncodedPrivateKey={KEY}")


def kinds(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def public(documents: list[dict[str, Any]]) -> list[str]:
    """Everything that gives the server an address outside the cluster."""
    found = [f"Ingress {d['metadata']['name']}" for d in kinds(documents, "Ingress")]
    found += [f"Service {d['metadata']['name']} ({d['spec'].get('type')})" for d in kinds(documents, "Service")
              if d["spec"].get("type", "ClusterIP") != "ClusterIP"]  # fmt: skip
    return found


def main_service(documents: list[dict[str, Any]]) -> dict[str, Any]:
    [service] = [d for d in kinds(documents, "Service") if d["metadata"]["name"] == "r1"]
    return service


def test_by_default_the_server_has_no_address_outside_the_cluster(helm: str) -> None:
    assert public(render(helm)) == []


def test_what_marketplace_provision_passes_renders_nothing_public(helm: str) -> None:
    # Google's provision step always sets INGRESS_AVAILABLE true, generates the API key and a self-signed
    # TLS certificate, and passes the ServiceAccount it made and ISTIO_ENABLED false.
    provisioned = {
        "name": "mcp", "namespace": "apps", "__image_repo_prefix__": "gcr.io/acme/erlmcp",
        "ingressAvailable": True, "auth.apiKey": "Generated0123456789abcdefABCDEFgh",
        "tls.certificate": self_signed_certificate(), "serviceAccount.name": "mcp-serviceaccount",
        "istio.enabled": False,
    }  # fmt: skip
    rendered = deployer_render(load_schema(ROOT / "schema.yaml"), provisioned, chart=ROOT / "chart", helm=helm)
    documents = [dict(m) for m in rendered.manifests]
    assert public(documents) == []
    assert [s["metadata"]["name"] for s in kinds(documents, "Secret") if s.get("type") == "kubernetes.io/tls"] == []


def test_ingress_available_alone_exposes_nothing(helm: str) -> None:
    assert public(render(helm, "ingressAvailable=true")) == []


def test_an_ingress_with_a_managed_certificate_serves_https_only(helm: str) -> None:
    documents = render(helm, "exposure=ingress", "ingress.host=mcp.example.com", "ingress.managedCertificate=true")
    [ingress] = kinds(documents, "Ingress")
    assert ingress["metadata"]["annotations"]["kubernetes.io/ingress.allow-http"] == "false"
    assert ingress["metadata"]["annotations"]["networking.gke.io/managed-certificates"] == "r1"
    assert [c["spec"]["domains"] for c in kinds(documents, "ManagedCertificate")] == [["mcp.example.com"]]
    assert main_service(documents)["spec"]["type"] == "ClusterIP"
    assert [s for s in kinds(documents, "Secret") if s.get("type") == "kubernetes.io/tls"] == []


def test_an_ingress_without_a_managed_certificate_serves_the_marketplace_certificate(helm: str) -> None:
    documents = render(helm, "exposure=ingress", *MARKETPLACE_CERTIFICATE)
    [ingress] = kinds(documents, "Ingress")
    assert ingress["metadata"]["annotations"]["kubernetes.io/ingress.allow-http"] == "false"
    assert ingress["spec"]["tls"] == [{"secretName": "r1-tls"}]
    [secret] = [s for s in kinds(documents, "Secret") if s["metadata"]["name"] == "r1-tls"]
    assert secret["data"] == {"tls.crt": PEM, "tls.key": KEY}
    assert kinds(documents, "ManagedCertificate") == []


def test_an_ingress_names_its_host_in_the_certificate_and_the_rule_when_given(helm: str) -> None:
    documents = render(helm, "exposure=ingress", "ingress.host=mcp.example.com", *MARKETPLACE_CERTIFICATE)
    [ingress] = kinds(documents, "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["mcp.example.com"], "secretName": "r1-tls"}]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["mcp.example.com"]


def test_a_load_balancer_speaks_https_from_the_pod(helm: str) -> None:
    documents = render(helm, "exposure=loadBalancer", "serverTls.enabled=true")
    service = main_service(documents)
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["externalTrafficPolicy"] == "Local"  # clients' addresses reach policies and rate limits
    assert [p["appProtocol"] for p in service["spec"]["ports"]] == ["https"]
    assert kinds(documents, "Ingress") == []


def test_the_certificate_secret_is_rendered_only_where_an_ingress_uses_it(helm: str) -> None:
    secrets = [s["metadata"]["name"] for s in kinds(render(helm, *MARKETPLACE_CERTIFICATE), "Secret")]
    assert "r1-tls" not in secrets


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["exposure=loadBalancer"],
         "exposure=loadBalancer would serve plaintext HTTP on a public address: set serverTls.enabled=true"),
        (["exposure=ingress"], "exposure=ingress needs a certificate"),
        (["exposure=ingress", "ingress.managedCertificate=true"], "ingress.managedCertificate needs ingress.host"),
        (["exposure=ingress", "ingressAvailable=false", *MARKETPLACE_CERTIFICATE],
         "exposure=ingress needs an ingress controller, and ingressAvailable=false says the cluster has none"),
        (["exposure=ingress", "auth.enabled=false", *MARKETPLACE_CERTIFICATE],
         "exposure=ingress with auth.enabled=false would let anyone on the internet call every tool"),
        (["exposure=loadBalancer", "serverTls.enabled=true", "auth.enabled=false"],
         "exposure=loadBalancer with auth.enabled=false would let anyone on the internet call every tool"),
        (["exposure=public"], "exposure"),
        (["service.type=LoadBalancer"], "service"),
    ],
)  # fmt: skip
def test_a_public_address_without_tls_or_without_auth_is_refused_saying_why(
    helm: str, sets: list[str], message: str
) -> None:
    assert message in refusal(helm, *sets)


def secret_references(documents: list[dict[str, Any]]) -> set[str]:
    """Every Secret name a rendered object points at: Pod volumes (projected too), env, an Ingress's TLS,
    the Application's info items."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretName" in node:
                found.add(str(node["secretName"]))
            for key in ("secretKeyRef", "secretRef", "secret"):
                if isinstance(node.get(key), dict) and "name" in node[key]:
                    found.add(str(node[key]["name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for document in documents:
        if document["kind"] != "Secret":
            walk(document.get("spec"))
    return found


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_no_rendered_secret_is_left_unreferenced(helm: str, scenario: Any) -> None:
    documents = render(helm, values=scenario)
    secrets = {s["metadata"]["name"] for s in kinds(documents, "Secret")}
    assert secrets - secret_references(documents) == set()


def test_both_service_ports_name_their_protocol_for_istio(helm: str) -> None:
    ports = {p["name"]: p.get("appProtocol") for s in kinds(render(helm), "Service") for p in s["spec"]["ports"]}
    assert ports == {"http": "http", "metrics": "http"}


def test_the_tester_never_gets_an_istio_sidecar(helm: str) -> None:
    [tester] = kinds(render(helm, "istio.enabled=true"), "Pod")
    assert tester["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert tester["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"


def test_with_istio_the_server_waits_for_its_proxy_before_starting(helm: str) -> None:
    [deployment] = kinds(render(helm, "istio.enabled=true"), "Deployment")
    config = deployment["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
    assert json.loads(config) == {"holdApplicationUntilProxyStarts": True}
    [plain] = kinds(render(helm), "Deployment")
    assert "proxy.istio.io/config" not in (plain["spec"]["template"]["metadata"].get("annotations") or {})
