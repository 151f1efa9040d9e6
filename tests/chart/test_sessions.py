"""Where sessions live (`sessions.store`): one Pod's memory only where one Pod serves, a Redis the chart runs, a
Redis the user runs, or none; a multi-replica install never silently keeps sessions in one Pod."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from deployer.errors import ValuesError
from deployer.marketplace.render import render as deployer_render
from deployer.marketplace.schema import load_schema
from tests.chart.rendering import refusal, render
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def secret_text(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def server_env(documents: list[dict[str, Any]]) -> dict[str, Any]:
    container = one(documents, "Deployment", "r1")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def state_sources(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the server's secrets folder (ERLMCP_SECRETS_DIR) is made of."""
    volumes = {v["name"]: v for v in one(documents, "Deployment", "r1")["spec"]["template"]["spec"]["volumes"]}
    sources: list[dict[str, Any]] = volumes["state"]["projected"]["sources"]
    return sources


@pytest.mark.parametrize("sets", [["replicaCount=3"], ["autoscaling.enabled=true"]])
def test_sessions_in_one_pods_memory_with_more_than_one_pod_are_refused_naming_the_way_out(
    helm: str, sets: list[str]
) -> None:
    message = refusal(helm, *sets)
    assert "sessions.store=pod" in message
    assert "404" in message
    for way_out in ("sessions.store=redis", "sessions.store=external", "sessions.store=stateless"):
        assert way_out in message


@pytest.mark.parametrize("store", ["redis", "stateless"])
def test_any_other_store_scales_out(helm: str, store: str) -> None:
    documents = render(helm, "replicaCount=3", f"sessions.store={store}")
    assert one(documents, "Deployment", "r1")["spec"]["replicas"] == 3


def test_the_deployer_refuses_three_replicas_in_pod_memory_with_exit_2_naming_sessions_store(helm: str) -> None:
    values = {"name": "mcp", "namespace": "apps", "__image_repo_prefix__": "gcr.io/acme/erlmcp", "replicaCount": 3}
    with pytest.raises(ValuesError, match=r"sessions\.store"):
        deployer_render(load_schema(ROOT / "schema.yaml"), values, chart=ROOT / "chart", helm=helm)


def test_the_redis_store_runs_a_hardened_redis_for_the_installation(helm: str) -> None:
    documents = render(helm, "replicaCount=3", "sessions.store=redis", "sessions.redis.password=p4ssw0rd-of-32-chars")
    redis = one(documents, "Deployment", "r1-redis")
    assert redis["spec"]["replicas"] == 1
    pod = redis["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "gcr.io/erlmcp-public/erlmcp/redis:0.2.0"
    assert container["args"] == ["/etc/redis/redis.conf"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert {"livenessProbe", "readinessProbe"} <= set(container)
    assert container["resources"]["limits"]["memory"]
    service = one(documents, "Service", "r1-redis")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("tcp-redis", 6379)]
    config = secret_text(one(documents, "Secret", "r1-redis"), "redis.conf")
    assert "requirepass p4ssw0rd-of-32-chars" in config.splitlines()
    assert 'save ""' in config.splitlines()


def test_the_server_gets_the_redis_url_from_a_secret(helm: str) -> None:
    documents = render(helm, "sessions.store=redis", "sessions.redis.password=p4ssw0rd-of-32-chars")
    url = secret_text(one(documents, "Secret", "r1-redis"), "erlmcp_redis_url")
    assert url == "redis://:p4ssw0rd-of-32-chars@r1-redis.ns1.svc:6379/0"
    assert {"secret": {"name": "r1-redis", "items": [{"key": "erlmcp_redis_url", "path": "erlmcp_redis_url"}]}} in (
        state_sources(documents)
    )
    assert "erlmcp_redis_url" not in one(documents, "Secret", "r1-state")["data"]
    assert "r1-redis" not in str(server_env(documents))  # not in the environment, where kubectl describe shows it


def test_a_generated_redis_password_is_long_and_used_by_both_sides(helm: str) -> None:
    documents = render(helm, "sessions.store=redis")
    secret = one(documents, "Secret", "r1-redis")
    config = secret_text(secret, "redis.conf")
    [password] = [line.split(" ", 1)[1] for line in config.splitlines() if line.startswith("requirepass ")]
    assert len(password) >= 32
    assert secret_text(secret, "erlmcp_redis_url") == f"redis://:{password}@r1-redis.ns1.svc:6379/0"


def test_only_the_server_reaches_redis_and_redis_reaches_nothing(helm: str) -> None:
    documents = render(helm, "sessions.store=redis")
    policy = one(documents, "NetworkPolicy", "r1-redis")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == []
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]] == ["server"]


def test_the_marketplace_redis_image_is_projected_from_the_schema(helm: str) -> None:
    values = {"name": "mcp", "namespace": "apps", "__image_repo_prefix__": "gcr.io/acme/erlmcp",
              "replicaCount": 3, "sessions.store": "redis"}  # fmt: skip
    rendered = deployer_render(load_schema(ROOT / "schema.yaml"), values, chart=ROOT / "chart", helm=helm)
    [redis] = [m for m in rendered.manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "mcp-redis"]
    assert redis["spec"]["template"]["spec"]["containers"][0]["image"] == "gcr.io/acme/erlmcp/redis:0.2.0"
    assert len(str(rendered.values["sessions.redis.password"])) == 32  # GENERATED_PASSWORD


def test_an_external_redis_comes_from_the_users_secret_with_its_ca(helm: str) -> None:
    documents = render(helm, "replicaCount=3", "sessions.store=external", "sessions.external.secretName=memorystore",
                       "sessions.external.caCert=true")  # fmt: skip
    assert {"secret": {"name": "memorystore", "items": [{"key": "redis-url", "path": "erlmcp_redis_url"}]}} in (
        state_sources(documents)
    )
    assert server_env(documents)["ERLMCP_REDIS_CA_FILE"] == "/etc/erlmcp/redis-ca/ca.crt"
    assert not [d for d in documents if d["metadata"]["name"] == "r1-redis"]


def test_an_external_redis_gets_egress_to_its_port_only(helm: str) -> None:
    documents = render(helm, "sessions.store=external", "sessions.external.url=rediss://:pw@10.0.0.3:6378/0",
                       "sessions.external.port=6378",
                       "sessions.external.egressTo[0].ipBlock.cidr=10.0.0.3/32")  # fmt: skip
    egress = one(documents, "NetworkPolicy", "r1")["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.0.0.3/32"}}], "ports": [{"port": 6378, "protocol": "TCP"}]} in egress
    assert secret_text(one(documents, "Secret", "r1-state"), "erlmcp_redis_url") == "rediss://:pw@10.0.0.3:6378/0"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["sessions.store=external"], "sessions.store=external needs sessions.external.secretName"),
        (["sessions.store=external", "sessions.external.url=http://x"], "sessions"),
        (["sessions.store=redis", "sessions.external.secretName=x"], "sessions.external is used only with"),
        (["sessions.store=memcached"], "sessions"),
    ],
)  # fmt: skip
def test_a_store_without_what_it_needs_is_refused_saying_what(helm: str, sets: list[str], message: str) -> None:
    assert message in refusal(helm, *sets)


def test_the_stateless_store_keeps_no_sessions(helm: str) -> None:
    assert server_env(render(helm, "sessions.store=stateless"))["ERLMCP_STATELESS"] == "true"
