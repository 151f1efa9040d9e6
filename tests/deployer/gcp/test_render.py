"""``python -m deployer <platform> render``: every Google Cloud platform command prints what it would create,
offline: no credentials anywhere (no ADC file, no gcloud folder, no metadata server) and no network at all (a
connection attempt fails the test). Its output is the one a plan of an empty project would create, for the
platforms whose plan a local server of the real API answers here (network and gce), and Cloud Run's is a Knative
Service the published schema accepts. Secrets never appear in it: only the files they would come from."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.cli import main
from tests.compute_rest import ComputeRest
from tests.deployer.gcp.test_cloudrun import knative_validator

PROJECT = "erlmcp-render-1"
PLATFORMS = ("cloudrun", "gce", "cluster", "network", "monitoring", "secrets", "memorystore", "logging")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials and no network: any connection attempt raises."""
    for variable in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG", "GCE_METADATA_HOST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default credentials either

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("render must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def rendered(capsys: pytest.CaptureFixture[str], platform: str, *argv: str) -> tuple[Any, Any]:
    """The platform's render as YAML and as JSON (both parsed)."""
    assert main([platform, "render", "--project", PROJECT, *argv]) == 0
    as_yaml = yaml.safe_load(capsys.readouterr().out)
    assert main([platform, "render", "--project", PROJECT, "--json", *argv]) == 0
    return as_yaml, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_platform_renders_offline_the_same_document_as_yaml_and_json(
    offline: None, capsys: pytest.CaptureFixture[str], platform: str
) -> None:
    as_yaml, as_json = rendered(capsys, platform)
    assert as_yaml, f"{platform} render printed nothing"
    assert as_yaml == as_json
    assert PROJECT in json.dumps(as_json)


def test_cloud_runs_render_is_a_knative_service_the_published_schema_accepts(
    offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    service, _ = rendered(capsys, "cloudrun")
    assert (service["apiVersion"], service["kind"]) == ("serving.knative.dev/v1", "Service")
    assert list(knative_validator().iter_errors(service)) == []


FRONTEND = "compute:\n  frontend:\n    enabled: true\n    domains: [mcp.example.com]\n"
STANDBY = "standby:\n  region: us-east1\n"


@pytest.mark.parametrize(("platform", "config_text"), [("network", None), ("gce", None), ("gce", FRONTEND),
                         ("network", STANDBY), ("gce", FRONTEND + STANDBY)],
                         ids=["network", "gce", "gce-frontend", "network-two-regions", "gce-two-regions"])  # fmt: skip
def test_compute_renders_hold_exactly_what_a_plan_of_an_empty_project_creates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, platform: str, config_text: str | None
) -> None:
    extra: list[str] = []
    if config_text is not None:
        (tmp_path / "erlmcp-gcp.yaml").write_text(config_text, encoding="utf-8")
        extra = ["--config", str(tmp_path / "erlmcp-gcp.yaml")]
    server = ComputeRest(PROJECT).start()
    try:
        document, _ = rendered(capsys, platform, *extra)
        if platform == "gce":  # (gce needs the network first; its plan then creates the group's resources)
            common = ["--project", PROJECT, "--insecure", "--endpoint", server.endpoint, *extra]
            assert main(["network", "apply", *common]) == 0
            capsys.readouterr()
        common = ["--project", PROJECT, "--insecure", "--endpoint", server.endpoint, *extra]
        assert main([platform, "plan", "--json", *common]) == 0
        plan = json.loads(capsys.readouterr().out)
    finally:
        server.stop()
    created = [(c["kind"], c["name"]) for c in plan["changes"] if c["action"] == "CREATE"]
    assert created == [(r["kind"], r["name"]) for r in document["resources"]]
    assert plan["summary"]["CREATE"] == len(document["resources"]) > 0


def test_the_gce_render_with_the_frontend_holds_the_certificate_proxies_url_maps_rules_and_cloud_armor(
    offline: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(FRONTEND, encoding="utf-8")
    document, _ = rendered(capsys, "gce", "--config", str(path))
    bodies = {(r["kind"], r["name"]): r["body"] for r in document["resources"]}
    [(named, certificate)] = [(name, b) for (kind, name), b in bodies.items() if kind == "SSL certificate"]
    assert named.startswith("erlmcp-cert-")
    assert certificate["type"] == "MANAGED"
    assert certificate["managed"]["domains"] == ["mcp.example.com"]
    assert bodies[("URL map", "erlmcp-url-map")]["defaultService"].endswith("/global/backendServices/erlmcp-backend")
    redirect = bodies[("URL map", "erlmcp-http-redirect")]["defaultUrlRedirect"]
    assert redirect == {"httpsRedirect": True, "redirectResponseCode": "MOVED_PERMANENTLY_DEFAULT", "stripQuery": False}
    assert bodies[("target HTTPS proxy", "erlmcp-https-proxy")]["sslCertificates"][0].endswith(
        "/global/sslCertificates/" + named
    )
    assert bodies[("target HTTP proxy", "erlmcp-http-proxy")]["urlMap"].endswith("/global/urlMaps/erlmcp-http-redirect")
    ports = {name: b["portRange"] for (kind, name), b in bodies.items() if kind == "global forwarding rule"}
    assert ports == {"erlmcp-https": "443", "erlmcp-http": "80"}
    policy = bodies[("security policy", "erlmcp-armor")]
    rate = policy["rules"][0]["rateLimitOptions"]
    assert (rate["enforceOnKey"], rate["exceedAction"], rate["rateLimitThreshold"]) == (
        "IP", "deny(429)", {"count": 600, "intervalSec": 60})  # fmt: skip
    assert policy["rules"][1]["priority"] == 2147483647
    assert bodies[("backend service", "erlmcp-backend")]["securityPolicy"].endswith("/securityPolicies/erlmcp-armor")


def test_secret_contents_never_appear_in_a_render_only_the_files_they_come_from(
    offline: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    api_keys = tmp_path / "api-keys"
    api_keys.write_text("ops * do-not-print-this-key-0123456789\n")
    token, pagerduty = tmp_path / "slack.token", tmp_path / "pagerduty.key"
    token.write_text("xoxb-do-not-print-this-token\n")
    pagerduty.write_text("do-not-print-this-service-key\n")
    secrets, _ = rendered(capsys, "secrets", "--value", f"api-keys={api_keys}")
    monitoring, _ = rendered(capsys, "monitoring", "--slack-channel", "#ops", "--slack-token-file", str(token),
                             "--pagerduty-key-file", str(pagerduty))  # fmt: skip
    text = json.dumps([secrets, monitoring])
    assert "do-not-print" not in text
    [keys] = [s for s in secrets["secrets"] if s["name"].endswith("/erlmcp-api-keys")]
    assert keys["version"] == f"(from {api_keys})"
    channels = {c["key"]: c for c in monitoring["notificationChannels"]}
    assert channels["slack"]["secretLabels"] == {"auth_token": f"(from {token})"}
    assert channels["pagerduty"]["secretLabels"] == {"service_key": f"(from {pagerduty})"}


def test_a_standby_region_is_rendered_beside_the_primary_by_network_and_gce(
    offline: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "erlmcp-gcp.yaml"
    path.write_text(FRONTEND + STANDBY, encoding="utf-8")
    network, _ = rendered(capsys, "network", "--config", str(path))
    names = [r["name"] for r in network["resources"]]
    assert "erlmcp-subnet-us-central1" in names
    assert "erlmcp-subnet-us-east1 (us-east1)" in names
    assert "erlmcp-router-us-east1 (us-east1)" in names
    bodies = {r["name"]: r["body"] for r in network["resources"]}
    assert bodies["erlmcp-subnet-us-east1 (us-east1)"]["ipCidrRange"] == "10.4.0.0/24"
    assert bodies["erlmcp-vpc-allow-gke-master"]["sourceRanges"] == ["172.16.0.0/28", "172.16.0.16/28"]

    gce, _ = rendered(capsys, "gce", "--config", str(path))
    kinds = [(r["kind"], r["name"]) for r in gce["resources"]]
    assert ("instance group manager", "erlmcp-mig (us-east1)") in kinds
    assert ("autoscaler", "erlmcp-autoscaler (us-east1)") in kinds
    [backend] = [r["body"] for r in gce["resources"] if r["kind"] == "backend service"]
    assert [b["group"].split("/projects/")[1] for b in backend["backends"]] == [
        f"{PROJECT}/regions/us-central1/instanceGroups/erlmcp-mig",
        f"{PROJECT}/regions/us-east1/instanceGroups/erlmcp-mig",
    ]
    assert len([k for k in kinds if k[0] == "SSL certificate"]) == 1  # one frontend for both regions
