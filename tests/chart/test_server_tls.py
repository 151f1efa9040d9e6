"""End-to-end TLS from the chart (serverTls): the certificate the chart makes works with the real server and the
test Pod's own verify arguments, names every cluster DNS name of the Service, and mutual TLS moves the probes to
the metrics port."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.chart.rendering import render
from tests.conftest import ROOT, start_server

pytestmark = pytest.mark.slow


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(documents, "Deployment", "r1")
    server: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return server


def test_the_chart_made_certificate_names_the_service_and_chains_to_its_ca(helm: str) -> None:
    secret = one(render(helm, "serverTls.enabled=true", "serverTls.extraDnsNames={mcp.example.com}"), "Secret",
                 "r1-server-tls")  # fmt: skip
    assert secret["type"] == "kubernetes.io/tls"
    certificate = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert set(names) == {"r1", "r1.ns1", "r1.ns1.svc", "r1.ns1.svc.cluster.local", "localhost", "mcp.example.com"}
    addresses = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in addresses.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]  # kubectl port-forward
    certificate.verify_directly_issued_by(ca)


def test_the_server_serves_the_chart_made_certificate_and_the_test_pods_arguments_pass(
    helm: str, tmp_path: Path
) -> None:
    documents = render(helm, "serverTls.enabled=true", "auth.apiKey=" + "k" * 32)
    secret = one(documents, "Secret", "r1-server-tls")["data"]
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / key).write_bytes(base64.b64decode(secret[key]))
    (tmp_path / "api-keys").write_text("k" * 32 + "\n")
    environment = {e["name"]: e["value"] for e in container(documents)["env"] if "value" in e}
    assert environment["ERLMCP_TLS_CERT_FILE"] == "/etc/erlmcp/tls/tls.crt"
    server = start_server(tmp_path, ["--api-key-file", str(tmp_path / "api-keys"), "--tls-cert-file",
                                     str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key")],
                          tls=True)  # fmt: skip
    try:
        [tester] = [d for d in documents if d["kind"] == "Pod"]
        args = tester["spec"]["containers"][0]["args"]
        assert args[args.index("--url") + 1] == "https://r1.ns1.svc:8080"
        assert args[args.index("--ca-file") + 1] == "/etc/erlmcp/tls/ca.crt"
        # This machine has no cluster DNS: the same arguments, with the address kubectl port-forward would give.
        local = {"https://r1.ns1.svc:8080": f"https://127.0.0.1:{server.port}",
                 "http://r1-metrics.ns1.svc:9090/metrics": server.metrics_url,
                 "/etc/erlmcp/tls/ca.crt": str(tmp_path / "ca.crt"),
                 "/etc/erlmcp/secrets/api-keys": str(tmp_path / "api-keys")}  # fmt: skip
        done = subprocess.run([sys.executable, "-m", "verify", *(local.get(a, a) for a in args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS tls.certificate" in done.stdout


def test_https_probes_and_an_https_service_port_under_tls(helm: str) -> None:
    documents = render(helm, "serverTls.enabled=true")
    server = container(documents)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["scheme"] == "HTTPS"
        assert server[probe]["httpGet"]["port"] == "http"
    service = one(documents, "Service", "r1")
    assert service["spec"]["ports"][0]["appProtocol"] == "https"
    assert service["metadata"]["annotations"]["cloud.google.com/app-protocols"] == '{"http":"HTTPS"}'


def test_mutual_tls_probes_the_metrics_port_and_the_test_pod_presents_its_certificate(helm: str) -> None:
    documents = render(helm, "serverTls.enabled=true", "serverTls.secretName=serving",
                       "serverTls.clientCaSecret=client-ca", "serverTls.testerClientSecret=tester-cert")  # fmt: skip
    assert not [d for d in documents if d["kind"] == "Secret" and d["metadata"]["name"] == "r1-server-tls"]
    server = container(documents)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"] == {"path": server[probe]["httpGet"]["path"], "port": "metrics"}
    environment = {e["name"]: e.get("value") for e in server["env"]}
    assert environment["ERLMCP_TLS_CLIENT_CA_FILE"] == "/etc/erlmcp/client-ca/ca.crt"
    volumes = {v["name"]: v for v in one(documents, "Deployment", "r1")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["server-tls"]["secret"]["secretName"] == "serving"
    assert volumes["client-ca"]["secret"]["secretName"] == "client-ca"
    [tester] = [d for d in documents if d["kind"] == "Pod"]
    args = tester["spec"]["containers"][0]["args"]
    assert args[args.index("--cert-file") + 1] == "/etc/erlmcp/client/tls.crt"
    tester_volumes = {v["name"]: v["secret"]["secretName"] for v in tester["spec"]["volumes"]}
    assert tester_volumes["client-certificate"] == "tester-cert"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["serverTls.clientCaSecret=ca"], "serverTls.clientCaSecret (mutual TLS) needs serverTls.enabled"),
        (["serverTls.enabled=true", "serverTls.clientCaSecret=ca"], "serverTls.testerClientSecret"),
        (["serverTls.enabled=true", "serverTls.clientCaSecret=ca", "serverTls.testerClientSecret=t",
          "exposure=ingress", "ingress.host=a.example.com"], "the load balancer has no client certificate"),
    ],
)  # fmt: skip
def test_contradictory_tls_values_are_refused_with_a_reason(helm: str, sets: list[str], message: str) -> None:
    command = [helm, "template", "r1", str(ROOT / "chart"), "--namespace", "ns1"]
    for value in sets:
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr
