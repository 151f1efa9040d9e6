"""Planning a local run from rendered manifests: the Pod's env, files and ports, and nothing invented."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from deployer.errors import LocalRunError
from deployer.local import plan_local_run, plan_tester_run
from deployer.render import render
from deployer.schema import load_schema
from tests.conftest import ROOT


def manifests(env: list[dict[str, Any]], volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> list[Any]:
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"catalog.yaml": "tools: []"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
         "data": {"api-keys": base64.b64encode(b"k1").decode()}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {"template": {"spec": {
                "terminationGracePeriodSeconds": 12,
                "volumes": volumes,
                "containers": [{
                    "name": "server", "args": ["--flag"], "env": env, "volumeMounts": mounts,
                    "ports": [{"name": "http", "containerPort": 8123}, {"name": "metrics", "containerPort": 9123}],
                    "readinessProbe": {"httpGet": {"path": "/ready-path", "port": "http"}},
                }],
            }}},
        },
    ]  # fmt: skip


VOLUMES = [
    {"name": "config", "configMap": {"name": "cfg"}},
    {"name": "keys", "secret": {"secretName": "sec"}},
    {"name": "tmp", "emptyDir": {}},
]
MOUNTS = [
    {"name": "config", "mountPath": "/etc/app/config"},
    {"name": "keys", "mountPath": "/etc/app/keys"},
    {"name": "tmp", "mountPath": "/tmp"},
]


def test_mounted_configmaps_and_secrets_are_laid_out_and_env_paths_follow_them(tmp_path: Path) -> None:
    env = [
        {"name": "CATALOG", "value": "/etc/app/config/catalog.yaml"},
        {"name": "KEYS", "value": "/etc/app/keys/api-keys"},
        {"name": "TMPDIR", "value": "/tmp"},
    ]
    plan = plan_local_run(manifests(env, VOLUMES, MOUNTS), root=tmp_path, entrypoint=["srv"])
    assert Path(plan.env["CATALOG"]).read_text() == "tools: []"
    assert Path(plan.env["KEYS"]).read_text() == "k1"
    assert Path(plan.env["TMPDIR"]).is_dir()
    assert plan.env["TMPDIR"].startswith(str(tmp_path))
    assert Path(plan.env["KEYS"]).stat().st_mode & 0o077 == 0


def test_ports_probe_grace_period_and_args_come_from_the_deployment(tmp_path: Path) -> None:
    plan = plan_local_run(manifests([], [], []), root=tmp_path, entrypoint=["srv"])
    assert plan.ports == {"http": 8123, "metrics": 9123}
    assert (plan.readiness_path, plan.grace_seconds, plan.argv) == ("/ready-path", 12.0, ("srv", "--flag"))


def test_env_from_configmap_and_secret_references_is_resolved_and_secrets_are_masked(tmp_path: Path) -> None:
    env = [
        {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "catalog.yaml"}}},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "api-keys"}}},
    ]
    plan = plan_local_run(manifests(env, [], []), root=tmp_path, entrypoint=["srv"])
    assert (plan.env["FROM_CM"], plan.env["FROM_SECRET"]) == ("tools: []", "k1")
    assert "k1" not in plan.describe()
    assert "FROM_SECRET=********" in plan.describe()


def test_a_wildcard_host_binds_loopback_and_the_difference_is_listed(tmp_path: Path) -> None:
    plan = plan_local_run(manifests([{"name": "HOST", "value": "0.0.0.0"}], [], []), root=tmp_path, entrypoint=["s"])
    assert plan.env["HOST"] == "127.0.0.1"
    assert any("HOST=0.0.0.0" in note for note in plan.differences)


@pytest.mark.parametrize(
    ("env", "volumes", "mounts", "message"),
    [
        ([{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}], [], [], "fieldRef"),
        ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}], [], [], "'missing'"),
        ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "nokey"}}}], [], [], "no key"),
        ([], [{"name": "v", "hostPath": {"path": "/"}}], [{"name": "v", "mountPath": "/x"}], "hostPath"),
        ([], [], [{"name": "ghost", "mountPath": "/x"}], "names no volume"),
    ],
)
def test_what_a_local_process_cannot_have_is_refused_clearly(
    tmp_path: Path, env: list[Any], volumes: list[Any], mounts: list[Any], message: str
) -> None:
    with pytest.raises(LocalRunError, match=message):
        plan_local_run(manifests(env, volumes, mounts), root=tmp_path, entrypoint=["srv"])


@pytest.mark.slow
def test_the_testers_service_addresses_become_the_local_servers_ports(tmp_path: Path, helm: str) -> None:
    values = {"name": "mcp", "namespace": "apps", "__image_repo_prefix__": "gcr.io/p/erlmcp",
              "service.port": 18080, "service.metricsPort": 19090}  # fmt: skip
    manifests = render(load_schema(ROOT / "schema.yaml"), values, chart=ROOT / "chart", helm=helm).manifests
    server = plan_local_run(manifests, root=tmp_path / "server", entrypoint=("python", "-m", "app"))
    tester = plan_tester_run(manifests, server, root=tmp_path / "tester", entrypoint=("python", "-m", "verify"))
    args = list(tester.argv)
    assert args[args.index("--url") + 1] == "http://127.0.0.1:18080"
    assert args[args.index("--metrics-url") + 1] == "http://127.0.0.1:19090/metrics"
    key_file = Path(args[args.index("--api-key-file") + 1])
    assert key_file.is_relative_to(tmp_path / "tester")
    assert key_file.read_text().strip()  # the chart's API-key Secret, laid out where the Pod mounts it
