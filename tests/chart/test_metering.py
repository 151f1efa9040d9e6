"""Usage-based billing: ``metering.*`` runs Google's metering agent (ubbagent) beside each server, configured as the
agent validates it, fed by the reporting secret Marketplace makes; off by default; and a metered listing's schema
(deployer/metered/schema-overlay.yaml over schema.yaml) renders it through the deployer as Marketplace would.

The agent itself does not run here (its image is on gcr.io, unreachable from these machines): :func:`ubbagent_errors`
applies the checks of ubbagent's ``config`` package (GoogleCloudPlatform/ubbagent at fd35696: ``Config.Validate``,
``Metric.Validate``, ``Heartbeat.Validate``, the servicecontrol endpoint's) to the configuration the agent would read
after its start script's ``envsubst``. What that leaves out: the agent's YAML decoding quirks (it uses ghodss/yaml:
JSON tags, case-sensitive), Service Control accepting the service name and the key, and the agent's runtime."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.marketplace.render import render as deployer_render
from deployer.marketplace.schema import parse_schema
from tests.chart.rendering import refusal, render
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

ON = ("metering.enabled=true", "metering.reportingSecret=erlmcp-1-reporting-secret",
      "metering.serviceName=erlmcp-mcp-server.endpoints.erlmcp-public.cloud.goog")  # fmt: skip
AGENT_ENV = {"AGENT_ENCODED_KEY": "ZXlKMGVYQmxJam9p", "AGENT_CONSUMER_ID": "project:acme-1"}


def deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == "Deployment"]
    return found


def agent_config(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent's configuration as it reads it: the ConfigMap's config.yaml, $AGENT_* expanded by envsubst."""
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-ubbagent")]
    text = re.sub(r"\$(AGENT_[A-Z_]+)", lambda m: AGENT_ENV[m.group(1)], config_map["data"]["config.yaml"])
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def ubbagent_errors(config: dict[str, Any]) -> list[str]:
    """What ubbagent's config validation would refuse (see the module)."""
    errors: list[str] = []
    identities = {i.get("name"): i for i in config.get("identities", [])}
    endpoints = {e.get("name"): e for e in config.get("endpoints", [])}
    metrics = {m.get("name"): m for m in config.get("metrics", [])}
    if not metrics:
        errors.append("missing metrics section")
    if not endpoints:
        errors.append("no endpoints defined")
    for name, identity in identities.items():
        if not (identity.get("gcp") or {}).get("encodedServiceAccountKey"):
            errors.append(f"identity {name}: missing service account key")
    for name, metric in metrics.items():
        if metric.get("type") not in {"int", "double"}:
            errors.append(f"metric {name}: invalid type")
        if ("aggregation" in metric) == ("passthrough" in metric):
            errors.append(f"metric {name}: needs exactly one of aggregation and passthrough")
        if "aggregation" in metric and not metric["aggregation"].get("bufferSeconds", 0) > 0:
            errors.append(f"metric {name}: bufferSeconds must be > 0")
        listed = [e.get("name") for e in metric.get("endpoints", [])]
        if not listed or any(e not in endpoints for e in listed) or len(set(listed)) != len(listed):
            errors.append(f"metric {name}: endpoints {listed}")
    for name, endpoint in endpoints.items():
        control = endpoint.get("servicecontrol")
        if control is None:
            continue
        if control.get("identity") not in identities:
            errors.append(f"endpoint {name}: unknown identity")
        if not control.get("serviceName"):
            errors.append("servicecontrol: missing service name")
        if not re.match(r"(project:|projectNumber:|apiKey:)", str(control.get("consumerId", ""))):
            errors.append("servicecontrol: invalid consumer ID")
    for source in config.get("sources", []):
        beat = source.get("heartbeat") or {}
        metric = metrics.get(beat.get("metric"))
        if metric is None:
            errors.append(f"source {source.get('name')}: unknown metric")
        elif metric["type"] == "int" and not isinstance((beat.get("value") or {}).get("int64Value"), int):
            errors.append(f"source {source.get('name')}: value must be int64Value")
        if not isinstance(beat.get("intervalSeconds"), int) or beat["intervalSeconds"] <= 0:
            errors.append(f"source {source.get('name')}: intervalSeconds must be > 0")
    return errors


def test_off_by_default_no_agent_no_config_and_no_https_egress(helm: str) -> None:
    documents = render(helm)
    containers = deployment(documents)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["server"]
    assert not [d for d in documents if d["metadata"]["name"].endswith("-ubbagent")]
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert not any(p.get("port") == 443 for pol in policies for r in pol["spec"].get("egress", [])
                   for p in r.get("ports", []))  # fmt: skip


def test_on_each_server_pod_runs_the_agent_with_the_reporting_secret_and_a_valid_heartbeat(helm: str) -> None:
    documents = render(helm, *ON)
    pod = deployment(documents)["spec"]["template"]["spec"]
    (agent,) = [c for c in pod["containers"] if c["name"] == "ubbagent"]
    assert agent["image"] == "gcr.io/cloud-marketplace-tools/metering/ubbagent:0.2.13"
    env = {e["name"]: e for e in agent["env"]}
    assert env["AGENT_CONFIG_FILE"]["value"] == "/etc/ubbagent/config.yaml"
    assert env["AGENT_LOCAL_PORT"]["value"] == "4567"
    for variable, key in (("AGENT_ENCODED_KEY", "reporting-key"), ("AGENT_CONSUMER_ID", "consumer-id")):
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "erlmcp-1-reporting-secret", "key": key}
    hardened = agent["securityContext"]
    assert hardened["readOnlyRootFilesystem"]
    assert hardened["runAsNonRoot"]
    assert hardened["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/etc/ubbagent", "/var/lib/ubbagent", "/tmp"}  # its start script writes /tmp
    assert all(name in volumes for name in mounts.values())

    config = agent_config(documents)
    assert ubbagent_errors(config) == []
    (source,) = config["sources"]
    assert source["heartbeat"] == {"metric": "instance_time", "intervalSeconds": 60, "value": {"int64Value": 60}}
    (endpoint,) = config["endpoints"]
    assert endpoint["servicecontrol"]["serviceName"] == "erlmcp-mcp-server.endpoints.erlmcp-public.cloud.goog"
    assert endpoint["servicecontrol"]["consumerId"] == "project:acme-1"  # from the secret, never in the ConfigMap

    (server_policy, *_) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert {"port": 443, "protocol": "TCP"} in [p for r in server_policy["spec"]["egress"] for p in r.get("ports", [])]


def test_the_metric_and_interval_are_the_listings(helm: str) -> None:
    documents = render(helm, *ON, "metering.metric=requests_time", "metering.intervalSeconds=30")
    config = agent_config(documents)
    assert ubbagent_errors(config) == []
    assert [m["name"] for m in config["metrics"]] == ["requests_time"]
    assert config["sources"][0]["heartbeat"]["value"] == {"int64Value": 30}


def test_the_check_of_the_agents_rules_can_fail() -> None:
    bad = {"metrics": [{"name": "m", "type": "int", "endpoints": [{"name": "x"}]}],
           "endpoints": [{"name": "sc", "servicecontrol": {"identity": "gcp", "consumerId": "acme"}}],
           "sources": [{"name": "s", "heartbeat": {"metric": "n", "intervalSeconds": 0}}]}  # fmt: skip
    assert ubbagent_errors(bad) == [
        "metric m: needs exactly one of aggregation and passthrough",
        "metric m: endpoints ['x']",
        "endpoint sc: unknown identity",
        "servicecontrol: missing service name",
        "servicecontrol: invalid consumer ID",
        "source s: unknown metric",
        "source s: intervalSeconds must be > 0",
    ]


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        (("metering.enabled=true", "metering.serviceName=s.example"), "needs metering.reportingSecret"),
        (("metering.enabled=true", "metering.reportingSecret=r"), "needs metering.serviceName"),
        ((*ON, "metering.intervalSeconds=0"), "metering.intervalSeconds"),
        ((*ON, "metering.reportingSecret=Not_A_Name"), "metering.reportingSecret"),
    ],
)
def test_values_that_cannot_report_are_refused_saying_why(helm: str, sets: tuple[str, ...], reason: str) -> None:
    assert reason in refusal(helm, *sets)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def test_a_metered_listings_schema_renders_the_agent_through_the_deployer_with_marketplaces_secret(
    helm: str, tmp_path: Path
) -> None:
    base = yaml.safe_load((ROOT / "schema.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "deployer" / "metered" / "schema-overlay.yaml").read_text())
    schema = parse_schema(deep_merge(base, overlay))
    values = {
        "name": "erlmcp-1",
        "namespace": "apps",
        "__image_repo_prefix__": "gcr.io/acme/erlmcp",
        "auth.apiKey": "0123456789abcdef0123",
        "metering.reportingSecret": "erlmcp-1-reporting-secret",
    }  # fmt: skip  (as Marketplace passes it)
    documents = deployer_render(schema, values, chart=ROOT / "chart", helm=helm).manifests
    pod = deployment(documents)["spec"]["template"]["spec"]
    (agent,) = [c for c in pod["containers"] if c["name"] == "ubbagent"]
    assert agent["image"] == "gcr.io/acme/erlmcp/ubbagent:0.2.0"  # republished under the listing's registry
    assert ubbagent_errors(agent_config(documents)) == []
