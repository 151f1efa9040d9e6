from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.errors import SchemaError
from deployer.marketplace.schema import load_schema, overlay_test_schema, parse_schema
from tests.conftest import ROOT


def shipped() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "schema.yaml").read_text())
    return data


def test_the_shipped_schema_is_valid_v2_with_name_namespace_and_the_server_and_redis_images() -> None:
    schema = load_schema(ROOT / "schema.yaml")
    assert schema.property_of_type("NAME").name == "name"
    assert schema.property_of_type("NAMESPACE").name == "namespace"
    assert {(i.value_name, i.projection) for i in schema.images} == {
        ("image.repository", "REPO_WITH_REGISTRY"),
        ("image.tag", "TAG"),
        ("sessions.redis.image.repository", "REPO_WITH_REGISTRY"),
        ("sessions.redis.image.tag", "TAG"),
    }


def broken(change: str) -> dict[str, Any]:
    data = copy.deepcopy(shipped())
    x = data["x-google-marketplace"]
    props = data["properties"]
    if change == "version":
        x["schemaVersion"] = "v3"
    elif change == "semver":
        x["publishedVersion"] = "1.0"
    elif change == "release_note":
        del x["publishedVersionMetadata"]["releaseNote"]
    elif change == "partner_only":
        del x["solutionId"]
    elif change == "projection":
        x["images"][""]["properties"]["image.tag"]["type"] = "DIGEST"
    elif change == "type":
        props["replicaCount"]["type"] = "array"
    elif change == "default_type":
        props["replicaCount"]["default"] = "one"
    elif change == "x_type":
        props["logLevel"]["x-google-marketplace"] = {"type": "NOPE"}
    elif change == "x_json_type":
        props["replicaCount"]["x-google-marketplace"] = {"type": "NAME"}
    elif change == "two_names":
        props["other"] = {"type": "string", "x-google-marketplace": {"type": "NAME"}}
    elif change == "required":
        data["required"].append("ghost")
    elif change == "v1_image":
        props["img"] = {"type": "string", "x-google-marketplace": {"type": "IMAGE"}}
    elif change == "short_password":
        props["auth.apiKey"]["x-google-marketplace"]["generatedPassword"]["length"] = 4
    elif change in RULE_BREAKERS:
        RULE_BREAKERS[change](data)
    return data


def _set(path: str, value: Any) -> Any:
    """A change that sets one key (dotted path from the root; 'x' is x-google-marketplace, 'p' the properties)."""

    def apply(data: dict[str, Any]) -> None:
        node = data
        *parents, leaf = path.split("/")
        for part in parents:
            part = {"x": "x-google-marketplace", "p": "properties"}.get(part, part)
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)

    return apply


SA = "p/serviceAccount"  # a SERVICE_ACCOUNT property; the shipped one is replaced in each breaker
GOOD_ROLE = {
    "type": "Role",
    "rulesType": "CUSTOM",
    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
}


def _account(**changes: Any) -> dict[str, Any]:
    account: dict[str, Any] = {"description": "Reads its own Pods", "roles": [dict(GOOD_ROLE)]}
    account.update(changes)
    return {"type": "string", "x-google-marketplace": {"type": "SERVICE_ACCOUNT", "serviceAccount": account}}


RULE_BREAKERS: dict[str, Any] = {
    "kalm": _set("x/managedUpdates", {"kalmSupported": "yes"}),
    "resources_not_list": _set("x/clusterConstraints", {"resources": {"requests": {"cpu": "1"}}}),
    "resources_no_request": _set("x/clusterConstraints", {"resources": [{"replicas": 1, "requests": {}}]}),
    "resources_replicas": _set("x/clusterConstraints", {"resources": [{"replicas": 0, "requests": {"cpu": "1"}}]}),
    "affinity": _set(
        "x/clusterConstraints",
        {"resources": [{"requests": {"cpu": "1"}, "affinity": {"simpleNodeAffinity": {"type": "ANY"}}}]},
    ),
    "minimum_nodes": _set(
        "x/clusterConstraints",
        {
            "resources": [
                {"requests": {"cpu": "1"}, "affinity": {"simpleNodeAffinity": {"type": "REQUIRE_MINIMUM_NODE_COUNT"}}}
            ]
        },
    ),
    "gpu_key": _set("x/clusterConstraints", {"resources": [{"requests": {"gpu": {"amd.com/gpu": {}}}}]}),
    "gpu_and_cpu": _set(
        "x/clusterConstraints", {"resources": [{"requests": {"cpu": "1", "gpu": {"nvidia.com/gpu": {}}}}]}
    ),
    "two_gpus": _set(
        "x/clusterConstraints",
        {"resources": [{"requests": {"gpu": {"nvidia.com/gpu": {}}}}, {"requests": {"gpu": {"nvidia.com/gpu": {}}}}]},
    ),
    "istio": _set("x/clusterConstraints", {"istio": {"type": "MAYBE"}}),
    "scopes": _set("x/clusterConstraints", {"gcp": {"nodes": {"requiredOauthScopes": ["cloud-platform"]}}}),
    "assisted_disabled": _set("x/clusterConstraints", {"assistedClusterCreation": {"type": "DISABLED"}}),
    "assisted_pools": _set(
        "x/clusterConstraints",
        {
            "assistedClusterCreation": {
                "type": "STRICT",
                "gke": {"nodePool": [{"numNodes": 1, "machineType": "e2-standard-4"}] * 2},
            }
        },
    ),
    "assisted_custom": _set(
        "x/clusterConstraints",
        {
            "assistedClusterCreation": {
                "type": "STRICT",
                "gke": {"nodePool": [{"numNodes": 3, "machineType": "custom-3-4096"}]},
            }
        },
    ),
    "sa_description": _set(SA, _account(description="")),
    "sa_role_type": _set(SA, _account(roles=[{**GOOD_ROLE, "type": "Group"}])),
    "sa_rules_type": _set(SA, _account(roles=[{**GOOD_ROLE, "rulesType": "ANY"}])),
    "sa_predefined": _set(SA, _account(roles=[{"type": "Role", "rulesType": "PREDEFINED"}])),
    "sa_predefined_rules": _set(
        SA, _account(roles=[{**GOOD_ROLE, "rulesType": "PREDEFINED", "rulesFromRoleName": "edit"}])
    ),
    "sa_cluster_admin": _set(
        SA, _account(roles=[{"type": "ClusterRole", "rulesType": "PREDEFINED", "rulesFromRoleName": "cluster-admin"}])
    ),
    "sa_custom_empty": _set(SA, _account(roles=[{"type": "Role", "rulesType": "CUSTOM", "rules": []}])),
    "sa_rule_groups": _set(SA, _account(roles=[{**GOOD_ROLE, "rules": [{"resources": ["pods"], "verbs": ["get"]}]}])),
    "sa_rule_verbs": _set(
        SA, _account(roles=[{**GOOD_ROLE, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}]}])
    ),
    "sa_rule_urls": _set(
        SA,
        _account(
            roles=[
                {
                    **GOOD_ROLE,
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "nonResourceURLs": ["/x"]}],
                }
            ]
        ),
    ),
    "sa_star": _set(
        SA,
        _account(
            roles=[
                {
                    **GOOD_ROLE,
                    "type": "ClusterRole",
                    "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
                }
            ]
        ),
    ),
    "deployer_sa": _set("x/deployerServiceAccount", {"roles": [GOOD_ROLE]}),
    "storage_class": _set("p/storageClass", {"type": "string", "x-google-marketplace": {"type": "STORAGE_CLASS"}}),
    "form_two": _set("form", [{"widget": "help", "description": "a"}, {"widget": "help", "description": "b"}]),
    "form_widget": _set("form", [{"widget": "text", "description": "a"}]),
    "property_name": _set("p/bad name", {"type": "string"}),
    "number_default": _set("p/ratio", {"type": "number", "default": 3}),
    "no_type": _set("p/untyped", {"default": "x"}),
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("version", "schemaVersion"),
        ("semver", "semantic version"),
        ("release_note", "releaseNote"),
        ("partner_only", "partnerId and solutionId"),
        ("projection", "projection 'DIGEST'"),
        ("type", "type 'array'"),
        ("default_type", "default 'one'"),
        ("x_type", "unknown x-google-marketplace type"),
        ("x_json_type", "needs JSON type string"),
        ("two_names", "exactly one property of type NAME"),
        ("required", "ghost"),
        ("v1_image", "v1 only"),
        ("short_password", "at least 8"),
        ("kalm", "kalmSupported"),
        ("resources_not_list", "resources must be a list"),
        ("resources_no_request", "at least one of cpu, memory, gpu"),
        ("resources_replicas", "replicas must be a positive integer"),
        ("affinity", "simpleNodeAffinity.type"),
        ("minimum_nodes", "needs minimumNodeCount"),
        ("gpu_key", "may only hold 'nvidia.com/gpu'"),
        ("gpu_and_cpu", "GPU entry cannot also"),
        ("two_gpus", "at most one GPU entry"),
        ("istio", "istio.type"),
        ("scopes", "requiredOauthScopes"),
        ("assisted_disabled", "needs creationGuidance"),
        ("assisted_pools", "exactly one pool"),
        ("assisted_custom", "even number of CPUs"),
        ("sa_description", "serviceAccount.description is required"),
        ("sa_role_type", r"roles\[0\].type must be Role or ClusterRole"),
        ("sa_rules_type", "rulesType must be PREDEFINED or CUSTOM"),
        ("sa_predefined", "PREDEFINED needs rulesFromRoleName"),
        ("sa_predefined_rules", "PREDEFINED needs rulesFromRoleName and no rules"),
        ("sa_cluster_admin", "only predefined ClusterRole allowed is view"),
        ("sa_custom_empty", "CUSTOM needs rules"),
        ("sa_rule_groups", "apiGroups is required"),
        ("sa_rule_verbs", "verbs must be a non-empty list"),
        ("sa_rule_urls", "nonResourceURLs"),
        ("sa_star", "is cluster-admin"),
        ("deployer_sa", "deployerServiceAccount.description is required"),
        ("storage_class", "storageClass"),
        ("form_two", "at most one item"),
        ("form_widget", "widget must be help"),
        ("property_name", "'bad name'"),
        ("number_default", "default 3 is not of type number"),
        ("no_type", "'untyped' has type None"),
    ],
)
def test_a_schema_breaking_a_marketplace_rule_is_refused_with_the_reason(change: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_schema(broken(change))


def test_an_unreadable_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="absent"):
        load_schema(tmp_path / "absent.yaml")


def test_a_well_formed_service_account_with_least_privilege_roles_is_accepted() -> None:
    data = shipped()
    _set(SA, _account(roles=[GOOD_ROLE, {"type": "ClusterRole", "rulesType": "PREDEFINED",
                                          "rulesFromRoleName": "view"}]))(data)  # fmt: skip
    assert parse_schema(data).properties["serviceAccount"].x_type == "SERVICE_ACCOUNT"


def test_the_test_schema_adds_properties_and_defaults_but_cannot_change_a_marketplace_type() -> None:
    test = {"properties": {"tester.image": {"type": "string", "default": "gcr.io/x/tester:1.0.0"},
                           "logLevel": {"type": "string", "default": "DEBUG"}}}  # fmt: skip
    merged = parse_schema(overlay_test_schema(shipped(), test))
    assert merged.properties["tester.image"].default == "gcr.io/x/tester:1.0.0"
    assert merged.properties["logLevel"].default == "DEBUG"
    with pytest.raises(SchemaError, match="may not change the x-google-marketplace type of property 'name'"):
        overlay_test_schema(shipped(), {"properties": {"name": {"type": "string"}}})
    typed = {"type": "string", "x-google-marketplace": {"type": "MASKED_FIELD"}}
    with pytest.raises(SchemaError, match="may not change the x-google-marketplace type of property 'secret'"):
        overlay_test_schema(shipped(), {"properties": {"secret": typed}})
    # Only properties count: a required list in the test schema is ignored, as Google's overlay does.
    assert overlay_test_schema(shipped(), {"required": ["ghost"]})["required"] == shipped()["required"]
