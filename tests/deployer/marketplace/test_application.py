"""Making the rendered chart ready to apply, by Marketplace's rules (no cluster needed)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from deployer.errors import InstallError
from deployer.marketplace.application import DEPLOY_INFO, VERIFICATION_ANNOTATION, owned, prepare
from deployer.marketplace.install import judge
from deployer.marketplace.manifests import Manifest
from deployer.marketplace.schema import Schema, load_schema
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema(ROOT / "schema.yaml")


def application(**spec: Any) -> Manifest:
    info = orjson.dumps({"partner_id": "erlmcp", "product_id": "erlmcp-mcp-server"}).decode()
    return {
        "apiVersion": "app.k8s.io/v1beta1",
        "kind": "Application",
        "metadata": {"name": "mcp", "annotations": {"marketplace.cloud.google.com/deploy-info": info}},
        "spec": {"descriptor": {"version": "0.2.0"}, "componentKinds": [{"group": "apps/v1", "kind": "Deployment"},
                                                                         {"group": "v1", "kind": "Secret"}], **spec},
    }  # fmt: skip


def obj(kind: str, name: str, api_version: str = "v1", **metadata: Any) -> Manifest:
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name, **metadata}}


def chart(*extra: Manifest) -> list[Manifest]:
    return [obj("Deployment", "mcp", "apps/v1"), obj("Secret", "mcp-keys"), application(), *extra]


def test_every_component_gets_the_name_label_and_an_owner_reference(schema: Schema) -> None:
    prepared = prepare(chart(), release="mcp", schema=schema)
    components, _ = owned(prepared, "uid-1")
    assert {m["metadata"]["labels"]["app.kubernetes.io/name"] for m in components} == {"mcp"}
    for manifest in components:
        assert manifest["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "app.k8s.io/v1beta1",
                "kind": "Application",
                "name": "mcp",
                "uid": "uid-1",
                "blockOwnerDeletion": True,
            }
        ]


def test_test_hooks_become_testers_in_test_mode_and_are_dropped_otherwise(schema: Schema) -> None:
    tester = obj("Pod", "mcp-test", annotations={"helm.sh/hook": "test"})
    assert prepare(chart(tester), release="mcp", schema=schema).testers == []
    testers = prepare(chart(tester), release="mcp", schema=schema, test=True).testers
    assert [t["metadata"]["annotations"] for t in testers] == [{VERIFICATION_ANNOTATION: "test"}]


def test_a_test_failure_hook_is_dropped_in_production_and_refused_in_a_test_run(schema: Schema) -> None:
    failure = obj("Pod", "mcp-fail", annotations={"helm.sh/hook": "test-failure"})
    prepared = prepare(chart(failure), release="mcp", schema=schema)
    assert "mcp-fail" not in {m["metadata"]["name"] for m in [*prepared.components, *prepared.testers]}
    with pytest.raises(InstallError, match="Helm hook 'test-failure'"):
        prepare(chart(failure), release="mcp", schema=schema, test=True)


def test_the_deployer_job_itself_never_counts_as_not_ready() -> None:
    job = {"kind": "Job", "metadata": {"name": "mcp-deployer", "labels": {
        "app.kubernetes.io/component": "deployer.marketplace.cloud.google.com"}}, "status": {}}  # fmt: skip
    assert judge(job).ready


def test_a_hook_other_than_test_is_refused(schema: Schema) -> None:
    hooked = obj("Secret", "pre", annotations={"helm.sh/hook": "pre-install"})
    with pytest.raises(InstallError, match="Helm hook 'pre-install' on Secret pre is not supported"):
        prepare(chart(hooked), release="mcp", schema=schema)


def test_exactly_one_application_is_required(schema: Schema) -> None:
    with pytest.raises(InstallError, match="exactly one Application"):
        prepare(chart(application()), release="mcp", schema=schema)
    with pytest.raises(InstallError, match="exactly one Application"):
        prepare(chart()[:2], release="mcp", schema=schema)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a["metadata"].pop("annotations"), "deploy-info"),
        (lambda a: a["metadata"]["annotations"].update({DEPLOY_INFO: "{"}), "deploy-info"),
        (lambda a: a["metadata"]["annotations"].update(
            {DEPLOY_INFO: '{"partner_id": "x", "product_id": "y"}'}), "does not match"),
        (lambda a: a["spec"]["descriptor"].update({"version": "0.3.0"}), "must equal the schema's publishedVersion"),
        (lambda a: a["spec"].pop("componentKinds"), "no componentKinds"),
    ],
)  # fmt: skip
def test_the_application_must_carry_what_marketplace_reads(schema: Schema, change: Any, message: str) -> None:
    manifests = chart()
    broken = copy.deepcopy(manifests[2])
    change(broken)
    with pytest.raises(InstallError, match=message):
        prepare([*manifests[:2], broken], release="mcp", schema=schema)


def test_a_kind_the_application_does_not_list_is_refused(schema: Schema) -> None:
    with pytest.raises(InstallError, match="renders ConfigMap but the Application's componentKinds does not list it"):
        prepare(chart(obj("ConfigMap", "stray")), release="mcp", schema=schema)


@pytest.mark.parametrize(
    ("item", "ready"),
    [
        ({"kind": "Deployment", "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}, True),
        ({"kind": "Deployment", "spec": {"replicas": 2}, "status": {"readyReplicas": 1}}, False),
        ({"kind": "Pod", "status": {"conditions": [{"type": "Ready", "status": "True"}]}}, True),
        ({"kind": "PersistentVolumeClaim", "status": {"phase": "Pending"}}, False),
        ({"kind": "Service", "spec": {"type": "LoadBalancer"}, "status": {}}, False),
        ({"kind": "Service", "spec": {"type": "ClusterIP"}}, True),
        ({"kind": "Ingress", "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}}, True),
        ({"kind": "ConfigMap"}, True),
    ],
)
def test_readiness_follows_googles_wait_for_ready_rules(item: dict[str, Any], ready: bool) -> None:
    assert judge({**item, "metadata": {"name": "x"}}).ready is ready
