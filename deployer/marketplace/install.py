"""Installing, checking and removing the app on a cluster, the way Google's Marketplace deployer does it.

One path serves the Marketplace deployer Job (the Application already exists as a placeholder) and people at a
command line (the Application is created first): the Application is applied, every component gets an
ownerReference to it, everything is applied server-side, and ``spec.assemblyPhase`` goes Pending, then Success
or Failed. Readiness follows Google's ``wait_for_ready`` rules; testers are Pods that must end Succeeded.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployer.errors import ClusterError, InstallError
from deployer.log import Log
from deployer.marketplace.application import NAME_LABEL, Prepared, component_kinds, owned
from deployer.marketplace.cluster import Cluster, is_cluster_scoped
from deployer.marketplace.manifests import Manifest

__all__ = [
    "Clock",
    "failed_on_error",
    "Readiness",
    "application_status",
    "install",
    "mark_phase",
    "run_testers",
    "uninstall",
    "wait_until_ready",
]

_DEPLOYER_COMPONENT = "deployer.marketplace.cloud.google.com"
_ENDED = frozenset({"Succeeded", "Failed", "Gone"})


@dataclass
class Clock:
    """Time, made replaceable so that waiting can be driven in tests without sleeping."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def _api_version(cluster: Cluster, group: str, kind: str, manifests: Sequence[Manifest]) -> str:
    """The apiVersion to read ``kind`` at: the one the chart rendered it at, else the server's preferred one."""
    for manifest in manifests:
        if manifest["kind"] == kind:
            return str(manifest["apiVersion"])
    return cluster.api_version_of(group, kind)


def mark_phase(cluster: Cluster, application: Manifest, namespace: str, phase: str) -> None:
    """Set the Application's ``spec.assemblyPhase`` (Pending, Success or Failed)."""
    cluster.patch(
        application["apiVersion"],
        "Application",
        application["metadata"]["name"],
        namespace,
        {"spec": {"assemblyPhase": phase}},
    )


def install(cluster: Cluster, prepared: Prepared, *, namespace: str, log: Log) -> str:
    """Apply the app: the Application first (Pending), then every component owned by it; objects of an earlier
    install that this one no longer renders are deleted; Success at the end.

    Returns the Application's UID. Run it inside :func:`failed_on_error`, which marks the Application Failed
    whatever stops the install.

    Raises:
        ClusterError: the API server refused an object.
    """
    application = prepared.application
    name = application["metadata"]["name"]
    live = cluster.get(application["apiVersion"], "Application", name, namespace)
    earlier_kinds = component_kinds(live) if live is not None else []
    if live is not None:
        log(f"Application {name} exists (uid {live['metadata']['uid']}); taking it over")
    pending = {**application, "spec": {**application.get("spec", {}), "assemblyPhase": "Pending"}}
    applied = cluster.apply(pending, namespace)
    uid = str(applied["metadata"]["uid"])
    components, _ = owned(prepared, uid)
    for manifest in components:
        cluster.apply(manifest, namespace)
        log(f"applied {manifest['kind']} {manifest['metadata']['name']}")
    _prune(cluster, prepared, uid, earlier_kinds, namespace, log)
    mark_phase(cluster, application, namespace, "Success")
    log(f"Application {name}: assemblyPhase Success")
    return uid


def _prune(
    cluster: Cluster, prepared: Prepared, uid: str, earlier: Sequence[tuple[str, str]], namespace: str, log: Log
) -> None:
    """Delete what an earlier install made and this one no longer renders (a PodDisruptionBudget after scaling
    to one replica, say): objects of the Application's kinds, then or now, that it owns and that carry its label."""
    name = prepared.application["metadata"]["name"]
    rendered = {(m["kind"], m["metadata"]["name"]) for m in [prepared.application, *prepared.components]}
    testers = {(m["kind"], m["metadata"]["name"]) for m in prepared.testers}
    for group, kind in dict.fromkeys([*earlier, *component_kinds(prepared.application)]):
        if is_cluster_scoped(kind) or kind == "Application":
            continue
        api_version = _api_version(cluster, group, kind, [prepared.application, *prepared.components])
        for item in cluster.list(api_version, kind, namespace, labels={NAME_LABEL: name}):
            key = (kind, item["metadata"]["name"])
            owners = {ref.get("uid") for ref in item["metadata"].get("ownerReferences") or []}
            if key in rendered or key in testers or uid not in owners:
                continue
            cluster.delete(api_version, kind, key[1], namespace)
            log(f"deleted {kind} {key[1]}: no longer part of the app")


@contextlib.contextmanager
def failed_on_error(cluster: Cluster, name: str, namespace: str, *, log: Log) -> Iterator[None]:
    """Whatever stops the block (an error, a bug, SIGTERM), mark the Application Failed if it exists, as the
    trap in Google's deploy.sh does, then let the failure go on."""
    try:
        yield
    except BaseException:
        try:
            live = cluster.get("app.k8s.io/v1beta1", "Application", name, namespace)
            if live is not None:
                mark_phase(cluster, live, namespace, "Failed")
                log(f"Application {name}: assemblyPhase Failed")
        except Exception as exc:
            log(f"could not mark the Application Failed: {exc}")
        raise


@dataclass(frozen=True, slots=True)
class Readiness:
    """One component's readiness by Google's rules, with the reason when it is not ready."""

    kind: str
    name: str
    ready: bool
    reason: str = ""


def _conditions(item: Mapping[str, Any]) -> dict[str, str]:
    return {c.get("type", ""): c.get("status", "") for c in (item.get("status") or {}).get("conditions") or []}


def judge(item: Mapping[str, Any]) -> Readiness:
    """Whether one object is ready, by the rules of Google's ``wait_for_ready``."""
    kind, name = item["kind"], item["metadata"]["name"]
    spec, status = item.get("spec") or {}, item.get("status") or {}
    if kind in {"Deployment", "StatefulSet"}:
        wanted, ready = spec.get("replicas", 1), status.get("readyReplicas") or 0
        return Readiness(kind, name, ready == wanted, f"{ready}/{wanted} replicas ready")
    if kind == "Pod":
        ok = _conditions(item).get("Ready") == "True"
        return Readiness(kind, name, ok, "Ready" if ok else f"phase {status.get('phase', 'unknown')}")
    if kind == "Job":
        if ((item.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == _DEPLOYER_COMPONENT:
            return Readiness(kind, name, True, "the deployer itself")
        ok = _conditions(item).get("Complete") == "True"
        return Readiness(kind, name, ok, "complete" if ok else "not complete")
    if kind == "PersistentVolumeClaim":
        return Readiness(kind, name, status.get("phase") == "Bound", f"phase {status.get('phase')}")
    if (kind == "Service" and spec.get("type") == "LoadBalancer") or kind == "Ingress":
        ok = bool((status.get("loadBalancer") or {}).get("ingress"))
        return Readiness(kind, name, ok, "has an address" if ok else "no load balancer address yet")
    return Readiness(kind, name, True, "exists")


def check_ready(
    cluster: Cluster, application: Manifest, namespace: str, rendered: Sequence[Manifest]
) -> list[Readiness]:
    """Readiness of every component: the objects of each listed kind that carry the app's name label.

    Raises:
        InstallError: no component is found at all.
    """
    name = application["metadata"]["name"]
    found: list[Readiness] = []
    for group, kind in component_kinds(application):
        if is_cluster_scoped(kind):
            continue
        items = cluster.list(_api_version(cluster, group, kind, rendered), kind, namespace, labels={NAME_LABEL: name})
        for item in items:
            item.setdefault("kind", kind)
            found.append(judge(item))
    if not found:
        raise InstallError(f"no top-level resources of Application {name} found (labelled {NAME_LABEL}={name})")
    return found


def wait_until_ready(
    cluster: Cluster,
    prepared: Prepared,
    namespace: str,
    *,
    timeout: float,
    stable: float = 30.0,
    poll: float = 4.0,
    log: Log,
    clock: Clock | None = None,
) -> None:
    """Wait until every component is ready and stays ready for ``stable`` seconds.

    Raises:
        InstallError: not ready and stable within ``timeout``; the message lists what was not ready.
    """
    clock = clock or Clock()
    deadline = clock.now() + timeout
    ready_since: float | None = None
    rendered = [prepared.application, *prepared.components]
    while True:
        states = check_ready(cluster, prepared.application, namespace, rendered)
        waiting = [s for s in states if not s.ready]
        now = clock.now()
        if waiting:
            if ready_since is not None:
                log("a component stopped being ready; waiting again")
            ready_since = None
        elif ready_since is None:
            ready_since = now
            log(f"all {len(states)} components ready; checking that they stay ready for {stable:g} s")
        if ready_since is not None and now - ready_since >= stable:
            log("Application ready")
            return
        if now >= deadline:
            detail = "; ".join(f"{s.kind} {s.name}: {s.reason}" for s in waiting) or "not stable long enough"
            raise InstallError(f"Application did not get ready before timeout of {timeout:g} seconds ({detail})")
        clock.sleep(poll)


@dataclass
class TesterOutcome:
    """What one tester Pod did."""

    name: str
    phase: str
    log: str = ""
    problems: list[str] = field(default_factory=list)


def _fresh(cluster: Cluster, tester: Manifest, namespace: str, clock: Clock, timeout: float = 60.0) -> str:
    """Apply a tester as a new object (one left by an earlier run is deleted first, so that its old result is
    never read as this run's); returns the new object's UID.

    Raises:
        InstallError: the old one is still there after ``timeout`` seconds.
    """
    api_version, kind, name = tester["apiVersion"], tester["kind"], tester["metadata"]["name"]
    if cluster.delete(api_version, kind, name, namespace):
        deadline = clock.now() + timeout
        while cluster.get(api_version, kind, name, namespace) is not None:
            if clock.now() >= deadline:
                raise InstallError(f"the tester {kind} {name} of an earlier run is still being deleted")
            clock.sleep(0.5)
    return str(cluster.apply(tester, namespace)["metadata"]["uid"])


def _phase(cluster: Cluster, name: str, uid: str, namespace: str) -> str:
    live = cluster.get("v1", "Pod", name, namespace)
    if live is None or live["metadata"].get("uid") != uid or live["metadata"].get("deletionTimestamp"):
        return "Gone"  # deleted (or replaced) by someone else while it ran
    return str((live.get("status") or {}).get("phase") or "Pending")


def run_testers(
    cluster: Cluster,
    prepared: Prepared,
    uid: str,
    namespace: str,
    *,
    timeout: float,
    poll: float = 2.0,
    log: Log,
    output: Log | None = None,
    clock: Clock | None = None,
) -> list[TesterOutcome]:
    """Run the tester Pods as Google's run_tester does: apply them, give each ``timeout`` seconds to end
    Succeeded or Failed, write their logs as ``SMOKE_TEST`` lines (``output``: stderr, unprefixed, which is
    what mpdev verify collects into tester.log), delete them.

    Raises:
        InstallError: there is no tester, one could not be created, or one failed, vanished or timed out.
    """
    clock = clock or Clock()
    write = output or (lambda line: print(line, file=sys.stderr, flush=True))
    _, testers = owned(prepared, uid)
    pods = [t for t in testers if t["kind"] == "Pod"]
    if not pods:
        raise InstallError("the chart rendered no tester Pod (helm.sh/hook: test); nothing would be verified")
    outcomes: list[TesterOutcome] = []
    try:
        uids = {}
        for tester in testers:
            uids[(tester["kind"], tester["metadata"]["name"])] = _fresh(cluster, tester, namespace, clock)
            log(f"started tester {tester['kind']} {tester['metadata']['name']}")
        for pod in pods:
            name = pod["metadata"]["name"]
            deadline = clock.now() + timeout
            while (phase := _phase(cluster, name, uids[("Pod", name)], namespace)) not in {
                "Succeeded",
                "Failed",
                "Gone",
            }:
                if clock.now() >= deadline:
                    phase = f"timed out after {timeout:g} s ({phase})"
                    break
                clock.sleep(poll)
            outcome = TesterOutcome(name, phase)
            try:
                outcome.log = cluster.pod_log(name, namespace)
            except ClusterError as exc:
                outcome.log = f"(log unavailable: {exc})"
            for line in outcome.log.splitlines() or [""]:
                write(f"SMOKE_TEST {name}: {line}")
            log(f"tester {name}: {outcome.phase}")
            outcomes.append(outcome)
    finally:
        for tester in testers:
            with contextlib.suppress(ClusterError):
                cluster.delete(tester["apiVersion"], tester["kind"], tester["metadata"]["name"], namespace)
    failed = [o.name for o in outcomes if o.phase != "Succeeded"]
    if failed:
        raise InstallError(f"At least 1 test failed or timed out: {', '.join(failed)}")
    return outcomes


def application_status(cluster: Cluster, name: str, namespace: str) -> dict[str, Any]:
    """The Application's phase and its components' readiness (for ``status``).

    Raises:
        ClusterError: the Application does not exist (status 404) or the API failed.
    """
    application = cluster.get("app.k8s.io/v1beta1", "Application", name, namespace)
    if application is None:
        raise ClusterError(f"there is no Application {name} in namespace {namespace}", status=404)
    try:
        states = check_ready(cluster, application, namespace, [])
    except InstallError:
        states = []
    return {
        "name": name,
        "namespace": namespace,
        "version": ((application.get("spec") or {}).get("descriptor") or {}).get("version"),
        "assemblyPhase": (application.get("spec") or {}).get("assemblyPhase"),
        "ready": bool(states) and all(s.ready for s in states),
        "components": [{"kind": s.kind, "name": s.name, "ready": s.ready, "detail": s.reason} for s in states],
    }


def uninstall(
    cluster: Cluster, name: str, namespace: str, *, timeout: float, log: Log, clock: Clock | None = None
) -> bool:
    """Delete the Application and everything labelled as its component; wait until all of it is gone.

    Returns False when there was no Application to remove.

    Raises:
        InstallError: something is still there after ``timeout`` seconds.
    """
    clock = clock or Clock()
    application = cluster.get("app.k8s.io/v1beta1", "Application", name, namespace)
    if application is None:
        return False
    # Versions first: a kind the cluster cannot serve stops us before anything is deleted.
    kinds = [
        (kind, _api_version(cluster, group, kind, []))
        for group, kind in component_kinds(application)
        if not is_cluster_scoped(kind) and kind != "Application"
    ]
    cluster.delete(application["apiVersion"], "Application", name, namespace, propagation="Foreground")
    log(f"deleted Application {name}; its components go with it")
    deadline = clock.now() + timeout
    while True:
        left: list[str] = []
        for kind, api_version in kinds:
            for item in cluster.list(api_version, kind, namespace, labels={NAME_LABEL: name}):
                if not (item.get("metadata") or {}).get("deletionTimestamp"):
                    # Not owned (or no garbage collector runs): delete it by name.
                    cluster.delete(api_version, kind, item["metadata"]["name"], namespace)
                left.append(f"{kind} {item['metadata']['name']}")
        if cluster.get(application["apiVersion"], "Application", name, namespace) is not None:
            left.append(f"Application {name}")
        if not left:
            log(f"Application {name} and its components are gone")
            return True
        if clock.now() >= deadline:
            raise InstallError(f"still present after {timeout:g} s: {', '.join(sorted(left))}")
        clock.sleep(1.0)
