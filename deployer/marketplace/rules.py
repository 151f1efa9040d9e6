"""The schema rules of Google's Marketplace tools that concern more than one property's type: cluster
constraints, the RBAC roles of service accounts, the form (``config_helper.py`` parse and ``validate()``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from deployer.errors import SchemaError

__all__ = ["check_cluster_constraints", "check_form", "check_service_account"]

_NODE_AFFINITY = {"REQUIRE_ONE_NODE_PER_REPLICA", "REQUIRE_MINIMUM_NODE_COUNT"}
_ISTIO = {"OPTIONAL", "REQUIRED", "UNSUPPORTED"}
_GPU = "nvidia.com/gpu"
_SCOPE_PREFIX = "https://www.googleapis.com/auth/"
_CUSTOM_MACHINE = re.compile(r"^custom-(\d+)-(\d+)$")
_PREDEFINED_CLUSTER_ROLES = {"view"}  # cluster-admin, admin and edit are too broad for a Marketplace app


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where} must be a mapping")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SchemaError(f"{where} must be a list")
    return value


def check_cluster_constraints(raw: Any) -> None:
    """``x-google-marketplace.clusterConstraints``.

    Raises:
        SchemaError: a rule is broken; the message names the key.
    """
    where = "x-google-marketplace.clusterConstraints"
    constraints = _mapping(raw, where)
    if "k8sVersion" in constraints and not isinstance(constraints["k8sVersion"], str):
        raise SchemaError(f"{where}.k8sVersion must be a version expression such as '>=1.27.0'")
    gpu_entries = 0
    for index, entry in enumerate(_list(constraints.get("resources", []), f"{where}.resources")):
        at = f"{where}.resources[{index}]"
        resource = _mapping(entry, at)
        requests = _mapping(resource.get("requests"), f"{at}.requests")
        if not {"cpu", "memory", "gpu"} & set(requests):
            raise SchemaError(f"{at}.requests needs at least one of cpu, memory, gpu")
        if "replicas" in resource and (not isinstance(resource["replicas"], int) or resource["replicas"] < 1):
            raise SchemaError(f"{at}.replicas must be a positive integer")
        if "gpu" in requests:
            gpu_entries += 1
            gpu = _mapping(requests["gpu"], f"{at}.requests.gpu")
            if set(gpu) != {_GPU}:
                raise SchemaError(f"{at}.requests.gpu may only hold {_GPU!r}")
            if {"cpu", "memory"} & set(requests) or {"affinity", "replicas"} & set(resource):
                raise SchemaError(f"{at}: a GPU entry cannot also ask for cpu, memory, affinity or replicas")
        if "affinity" in resource:
            simple = _mapping(
                _mapping(resource["affinity"], f"{at}.affinity").get("simpleNodeAffinity"),
                f"{at}.affinity.simpleNodeAffinity",
            )
            kind = simple.get("type")
            if kind not in _NODE_AFFINITY:
                raise SchemaError(
                    f"{at}.affinity.simpleNodeAffinity.type must be one of {', '.join(sorted(_NODE_AFFINITY))}"
                )
            if kind == "REQUIRE_MINIMUM_NODE_COUNT" and not isinstance(simple.get("minimumNodeCount"), int):
                raise SchemaError(
                    f"{at}.affinity.simpleNodeAffinity: REQUIRE_MINIMUM_NODE_COUNT needs minimumNodeCount"
                )
    if gpu_entries > 1:
        raise SchemaError(f"{where}.resources may hold at most one GPU entry")
    if "istio" in constraints:
        istio = _mapping(constraints["istio"], f"{where}.istio").get("type")
        if istio not in _ISTIO:
            raise SchemaError(f"{where}.istio.type must be one of {', '.join(sorted(_ISTIO))}, not {istio!r}")
    if "gcp" in constraints:
        nodes = _mapping(_mapping(constraints["gcp"], f"{where}.gcp").get("nodes", {}), f"{where}.gcp.nodes")
        scopes = _list(nodes.get("requiredOauthScopes", []), f"{where}.gcp.nodes.requiredOauthScopes")
        for scope in scopes:
            if not isinstance(scope, str) or not scope.startswith(_SCOPE_PREFIX):
                raise SchemaError(f"{where}.gcp.nodes.requiredOauthScopes: {scope!r} must start with {_SCOPE_PREFIX}")
    if "assistedClusterCreation" in constraints:
        _check_assisted(_mapping(constraints["assistedClusterCreation"], f"{where}.assistedClusterCreation"))


def _check_assisted(assisted: Mapping[str, Any]) -> None:
    where = "x-google-marketplace.clusterConstraints.assistedClusterCreation"
    kind = assisted.get("type")
    if kind == "DISABLED":
        if not assisted.get("creationGuidance"):
            raise SchemaError(f"{where}: type DISABLED needs creationGuidance")
        return
    if kind != "STRICT":
        raise SchemaError(f"{where}.type must be DISABLED or STRICT, not {kind!r}")
    pools = _list(_mapping(assisted.get("gke"), f"{where}.gke").get("nodePool"), f"{where}.gke.nodePool")
    if len(pools) != 1:
        raise SchemaError(f"{where}.gke.nodePool must hold exactly one pool, not {len(pools)}")
    pool = _mapping(pools[0], f"{where}.gke.nodePool[0]")
    if not isinstance(pool.get("numNodes"), int) or not isinstance(pool.get("machineType"), str):
        raise SchemaError(f"{where}.gke.nodePool[0] needs numNodes (an integer) and machineType")
    custom = _CUSTOM_MACHINE.match(pool["machineType"])
    if custom and int(custom.group(1)) != 1 and int(custom.group(1)) % 2:
        raise SchemaError(
            f"{where}.gke.nodePool[0].machineType {pool['machineType']!r}: a custom type needs 1 or an "
            "even number of CPUs"
        )


def check_service_account(raw: Any, where: str) -> None:
    """A ``SERVICE_ACCOUNT`` property's ``serviceAccount`` or ``deployerServiceAccount``: a description that
    explains the permissions, and least-privilege roles.

    Raises:
        SchemaError: a rule is broken; the message names the key.
    """
    account = _mapping(raw, where)
    if not isinstance(account.get("description"), str) or not account["description"].strip():
        raise SchemaError(f"{where}.description is required: say what the permissions are for")
    for index, entry in enumerate(_list(account.get("roles", []), f"{where}.roles")):
        at = f"{where}.roles[{index}]"
        role = _mapping(entry, at)
        kind, rules_type = role.get("type"), role.get("rulesType")
        if kind not in {"Role", "ClusterRole"}:
            raise SchemaError(f"{at}.type must be Role or ClusterRole, not {kind!r}")
        if rules_type == "PREDEFINED":
            name = role.get("rulesFromRoleName")
            if not isinstance(name, str) or not name or "rules" in role:
                raise SchemaError(f"{at}: rulesType PREDEFINED needs rulesFromRoleName and no rules")
            if kind == "ClusterRole" and name not in _PREDEFINED_CLUSTER_ROLES:
                raise SchemaError(f"{at}: the only predefined ClusterRole allowed is view, not {name!r}")
        elif rules_type == "CUSTOM":
            rules = _list(role.get("rules"), f"{at}.rules")
            if not rules:
                raise SchemaError(f"{at}: rulesType CUSTOM needs rules")
            for number, raw_rule in enumerate(rules):
                _check_rule(_mapping(raw_rule, f"{at}.rules[{number}]"), f"{at}.rules[{number}]", kind)
        else:
            raise SchemaError(f"{at}.rulesType must be PREDEFINED or CUSTOM, not {rules_type!r}")


def _check_rule(rule: Mapping[str, Any], at: str, kind: str) -> None:
    if "nonResourceURLs" in rule:
        raise SchemaError(f"{at}: nonResourceURLs are not allowed")
    if not isinstance(rule.get("apiGroups"), list):
        raise SchemaError(f"{at}.apiGroups is required (use [''] for the core group)")
    for key in ("resources", "verbs"):
        if not isinstance(rule.get(key), list) or not rule[key]:
            raise SchemaError(f"{at}.{key} must be a non-empty list")
    if kind == "ClusterRole" and all("*" in rule[key] for key in ("apiGroups", "resources", "verbs")):
        raise SchemaError(f"{at}: a ClusterRole rule with '*' in apiGroups, resources and verbs is cluster-admin")


def check_form(raw: Any) -> None:
    """The top-level ``form``: at most one item, a ``help`` widget with a description.

    Raises:
        SchemaError: a rule is broken.
    """
    if raw is None:
        return
    items = _list(raw, "form")
    if len(items) > 1:
        raise SchemaError(f"form may hold at most one item, not {len(items)}")
    for item in items:
        widget = _mapping(item, "form[0]")
        if widget.get("widget") != "help":
            raise SchemaError(f"form[0].widget must be help, not {widget.get('widget')!r}")
        if not isinstance(widget.get("description"), str) or not widget["description"]:
            raise SchemaError("form[0].description is required")
