"""No Pod annotation lets whoever can read a Pod spec test guesses of a secret offline.

The chart rolled the Pods when a secret changed through annotations that were a plain SHA-256 of the secret:
``checksum/api-keys`` (the API key), ``checksum/sessions`` (the Redis password, or the external Redis URL with its
password) and the Redis Pod's ``checksum/config`` (the password and the memory size). Anyone allowed to read Pods
(far more people than may read Secrets) could brute-force a key a user chose. The checksums are now salted with the
installation's request-state key, a generated secret kept on upgrade: they still roll the Pods when a secret
changes, and stay the same when nothing changed.

Rendered by real Helm; the upgrades run against a real API server (etcd and kube-apiserver, ``control_plane``),
where ``metadata.generation`` of a Deployment moves only when its Pod template changes, that is when its Pods roll.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from deployer.marketplace.cluster import Cluster
from tests.chart.rendering import render
from tests.conftest import ROOT
from tests.kube import ControlPlane

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

API_KEY = "correct-horse-battery-staple"  # a key a user chose: a dictionary word list finds it
REDIS_PASSWORD = "hunter2-hunter2-hunter2"
EXTERNAL_URL = "redis://:tr0ub4dor-and-3@redis.example.internal:6379/0"
# Every plain hash a template engine (Helm's sprig) or a careless hand could have used.
HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sha3_256", "sha3_512", "blake2b", "blake2s")
SEPARATORS = ("", "/", ":", "\n", " ", "-", "|")


def annotations_of(documents: list[dict[str, Any]]) -> dict[str, str]:
    """Every annotation of every object and Pod template, as ``kind/name:key`` → value."""
    found: dict[str, str] = {}
    for document in documents:
        where = f"{document['kind']}/{document['metadata']['name']}"
        template = ((document.get("spec") or {}).get("template") or {}).get("metadata") or {}
        for source in (document["metadata"], template):
            for key, value in (source.get("annotations") or {}).items():
                found[f"{where}:{key}"] = str(value)
    return found


def scalars(values: object) -> set[str]:
    """Every scalar of a values tree, as text (what a template could have mixed into a hash)."""
    if isinstance(values, dict):
        return set().union(*(scalars(v) for v in values.values())) if values else set()
    if isinstance(values, list):
        return set().union(*(scalars(v) for v in values)) if values else set()
    return {str(values)} if values is not None else set()


def plain_hashes(secret: str, others: set[str]) -> set[str]:
    """Hex digests of ``secret`` alone and joined to any other known value, in either order."""
    candidates = {secret}
    for other, separator in itertools.product(others, SEPARATORS):
        candidates |= {f"{secret}{separator}{other}", f"{other}{separator}{secret}"}
    return {hashlib.new(name, candidate.encode()).hexdigest() for name in HASHES for candidate in candidates}


CASES = {
    "api key and chart's redis": [
        "auth.apiKey=" + API_KEY,
        "sessions.store=redis",
        "sessions.redis.password=" + REDIS_PASSWORD,
    ],
    "external redis url": ["sessions.store=external", "sessions.external.url=" + EXTERNAL_URL],
}
SECRETS = (API_KEY, REDIS_PASSWORD, EXTERNAL_URL, "tr0ub4dor-and-3")


@pytest.mark.parametrize("case", list(CASES))
def test_no_annotation_is_a_plain_hash_of_a_secret_or_contains_one(helm: str, case: str) -> None:
    documents = render(helm, *CASES[case])
    shown = annotations_of(documents)
    assert any(key.endswith("checksum/sessions") for key in shown), "the case renders no secret checksum"
    defaults = yaml.safe_load((ROOT / "chart" / "values.yaml").read_text())
    others = scalars(defaults) | {s.split("=", 1)[1] for s in CASES[case]} | {"r1", "ns1"}
    for secret in SECRETS:
        hashes = plain_hashes(secret, others - {secret})
        for where, value in shown.items():
            assert secret not in value, f"{where} shows a secret"
            plain = value.lower() in hashes
            assert not plain, f"{where} is a plain hash of a secret: it can be brute-forced"


def test_the_checksums_depend_on_a_secret_that_is_not_in_the_pod_spec(helm: str) -> None:
    salts = ("S" * 40, "T" * 40)
    rendered = [render(helm, *CASES["api key and chart's redis"], f"requestStateKey={salt}") for salt in salts]
    first, second = (annotations_of(documents) for documents in rendered)
    checksums = [key for key in first if "checksum/" in key]
    assert sorted(checksums) == sorted(
        ["Deployment/r1:checksum/api-keys", "Deployment/r1:checksum/sessions", "Deployment/r1-redis:checksum/config"]
    )
    for key in checksums:
        assert first[key] != second[key], f"{key} can be computed from the values alone"
    for documents in rendered:
        pods = [d["spec"]["template"] for d in documents if d["kind"] == "Deployment"]
        assert not any(salt in yaml.safe_dump(pods) for salt in salts)


# -- upgrades against a real API server -------------------------------------------------------------------------

_namespaces = itertools.count(1)


@pytest.fixture
def cluster(control_plane: ControlPlane) -> Iterator[Cluster]:
    found = Cluster.connect(kubeconfig=control_plane.kubeconfig)
    yield found
    found.close()


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    name = f"annotations{next(_namespaces)}-{os.getpid()}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, name)
    return name


def helm_upgrade(helm: str, control_plane: ControlPlane, namespace: str, *sets: str) -> None:
    """``helm upgrade --install`` of release r1 with ``sets``, as a user runs it: lookups read the cluster."""
    command = [helm, "upgrade", "--install", "r1", str(ROOT / "chart"), "--namespace", namespace,
               "--kubeconfig", str(control_plane.kubeconfig)]  # fmt: skip
    for value in sets:
        command += ["--set", value]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def pod_templates(cluster: Cluster, namespace: str) -> dict[str, tuple[int, dict[str, str]]]:
    """Each Deployment's generation (it moves when the Pod template changes: the Pods roll) and Pod annotations."""
    found = {}
    for name in ("r1", "r1-redis"):
        live = cluster.get("apps/v1", "Deployment", name, namespace)
        assert live is not None, f"no Deployment {name}"
        annotations = live["spec"]["template"]["metadata"].get("annotations") or {}
        found[name] = (int(live["metadata"]["generation"]), dict(annotations))
    return found


def test_an_upgrade_with_the_same_values_rolls_nothing_and_a_new_secret_rolls_what_reads_it(
    helm: str, control_plane: ControlPlane, cluster: Cluster, namespace: str
) -> None:
    values = ["auth.apiKey=" + API_KEY, "sessions.store=redis", "sessions.redis.password=" + REDIS_PASSWORD]
    helm_upgrade(helm, control_plane, namespace, *values)  # first install: the request-state key is generated
    installed = pod_templates(cluster, namespace)

    helm_upgrade(helm, control_plane, namespace, *values)
    assert pod_templates(cluster, namespace) == installed, "an upgrade with the same values rolled the Pods"

    # A new API key rolls the server's Pods (the key holds at once), not Redis.
    helm_upgrade(helm, control_plane, namespace, *values[:-1], "sessions.redis.password=" + REDIS_PASSWORD,
                 "auth.apiKey=another-key-0123456789")  # fmt: skip
    new_key = pod_templates(cluster, namespace)
    assert new_key["r1"][0] == installed["r1"][0] + 1
    assert new_key["r1"][1]["checksum/api-keys"] != installed["r1"][1]["checksum/api-keys"]
    assert new_key["r1-redis"] == installed["r1-redis"]

    # A new Redis password restarts Redis and the server's Pods (they read the Redis URL when they start).
    helm_upgrade(helm, control_plane, namespace, "auth.apiKey=another-key-0123456789", "sessions.store=redis",
                 "sessions.redis.password=another-password-0123")  # fmt: skip
    new_password = pod_templates(cluster, namespace)
    assert new_password["r1"][0] == new_key["r1"][0] + 1
    assert new_password["r1-redis"][0] == new_key["r1-redis"][0] + 1
    assert new_password["r1"][1]["checksum/sessions"] != new_key["r1"][1]["checksum/sessions"]
