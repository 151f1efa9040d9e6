"""Run the rendered Deployment's server container as a local process, configured exactly as the Pod would be.

What the Pod gets, the process gets: the container's env (values, ConfigMap and Secret references), its
ConfigMap, Secret and emptyDir volumes laid out under a private folder, and its ports. Paths under a mount
point in env values are moved under that folder. Two things differ, and the plan lists them: the image's
entrypoint is this machine's ``python -m app``, and a listener on 0.0.0.0 (all interfaces of the Pod's own
network namespace) binds 127.0.0.1, which is what that means on a shared machine.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deployer.application import hook_of
from deployer.errors import DeployerError, LocalRunError
from deployer.manifests import Manifest, find, find_one

__all__ = ["LocalPlan", "LocalServer", "plan_local_run", "plan_tester_run"]

_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}  # noqa: S104 - these are recognised, not bound


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """How to start the server locally, and how to probe it."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    root: Path
    ports: Mapping[str, int]  # container port name -> port
    readiness_path: str
    grace_seconds: float
    differences: tuple[str, ...]
    secret_env: frozenset[str] = field(default_factory=frozenset)
    readiness_port: str = "http"  # the probe's port: a container port name or a number
    readiness_scheme: str = "HTTP"  # the probe's scheme: HTTP, or HTTPS (not verified, as the kubelet does)

    def readiness_url(self) -> str:
        """The URL the kubelet's readiness probe asks, on 127.0.0.1.

        Raises:
            LocalRunError: the probe names a port the container does not declare.
        """
        port = self.ports.get(self.readiness_port) or (
            int(self.readiness_port) if self.readiness_port.isdigit() else None
        )
        if port is None:
            raise LocalRunError(
                f"the readiness probe's port {self.readiness_port!r} is not a port of the server container"
            )
        return f"{self.readiness_scheme.lower()}://127.0.0.1:{port}{self.readiness_path}"

    def describe(self) -> str:
        """A readable summary, secrets masked."""
        lines = [f"command: {' '.join(self.argv)}", f"root:    {self.root}"]
        lines += [f"port:    {name}={port}" for name, port in self.ports.items()]
        for key in sorted(self.env):
            shown = "********" if key in self.secret_env else self.env[key]
            lines.append(f"env:     {key}={shown}")
        lines += [f"differs: {note}" for note in self.differences]
        return "\n".join(lines)

    def path_of(self, container_path: str) -> Path:
        """Where a path inside the container lives locally."""
        return self.root / container_path.lstrip("/")


def _data_of(manifest: Manifest) -> dict[str, bytes]:
    if manifest["kind"] == "Secret":
        data = {k: base64.b64decode(v) for k, v in (manifest.get("data") or {}).items()}
        data.update({k: str(v).encode() for k, v in (manifest.get("stringData") or {}).items()})
        return data
    return {k: str(v).encode() for k, v in (manifest.get("data") or {}).items()}


def _source(manifests: Sequence[Manifest], kind: str, name: str) -> dict[str, bytes]:
    try:
        return _data_of(find_one(manifests, kind, name))
    except DeployerError as exc:
        raise LocalRunError(f"the Pod refers to {kind} {name!r}, which the chart does not render") from exc


def _lay_out_volume(volume: Mapping[str, Any], target: Path, manifests: Sequence[Manifest]) -> bool:
    """Write one volume's files under ``target``; returns whether it holds secrets."""
    target.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        return False
    if "configMap" in volume:
        sources = [("ConfigMap", volume["configMap"]["name"], volume["configMap"])]
    elif "secret" in volume:
        sources = [("Secret", volume["secret"]["secretName"], volume["secret"])]
    elif "projected" in volume:  # several ConfigMaps and Secrets in one folder
        sources = []
        for source in volume["projected"].get("sources") or []:
            kind = "ConfigMap" if "configMap" in source else "Secret" if "secret" in source else None
            if kind is None:
                raise LocalRunError(f"volume {volume.get('name')!r} projects what a local run cannot provide: "
                                    f"{', '.join(source)}")  # fmt: skip
            spec = source["configMap" if kind == "ConfigMap" else "secret"]
            sources.append((kind, spec["name"], spec))
    else:
        kinds = ", ".join(k for k in volume if k != "name")
        raise LocalRunError(f"volume {volume.get('name')!r} is of a kind a local run cannot provide: {kinds}")
    for kind, name, spec in sources:
        data = _source(manifests, kind, name)
        items = spec.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                raise LocalRunError(f"volume {volume.get('name')!r}: {kind} {name!r} has no key {item['key']!r}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(data[item["key"]])
    return any(kind == "Secret" for kind, _, _ in sources)


def _env_value(entry: Mapping[str, Any], manifests: Sequence[Manifest]) -> tuple[str, bool]:
    if "value" in entry:
        return str(entry["value"]), False
    ref = entry.get("valueFrom") or {}
    for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
        if key in ref:
            data = _source(manifests, kind, ref[key]["name"])
            if ref[key]["key"] not in data:
                raise LocalRunError(f"env {entry['name']}: {kind} {ref[key]['name']!r} has no key {ref[key]['key']!r}")
            return data[ref[key]["key"]].decode(), kind == "Secret"
    raise LocalRunError(f"env {entry['name']}: a local run cannot provide {', '.join(ref) or 'an empty value'}")


def _plan_pod(
    pod: Mapping[str, Any],
    manifests: Sequence[Manifest],
    *,
    root: Path,
    entrypoint: Sequence[str],
    image_runs: str,
    translate: Callable[[str], str] = lambda value: value,
    notes: Sequence[str] = (),
) -> LocalPlan:
    """Lay out one Pod's files under ``root`` and plan its first container as a process."""
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise LocalRunError(f"volumeMount {mount['name']!r} names no volume of the Pod")
        local = root / mount["mountPath"].lstrip("/")
        _lay_out_volume(volume, local, manifests)
        mounts[mount["mountPath"]] = local

    def localise(value: str) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")) :]
        return translate(value)

    differences = [f"entrypoint: {' '.join(entrypoint)} (the image runs {image_runs})", *notes]
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    secret_env: set[str] = set()
    for entry in container.get("env") or []:
        value, secret = _env_value(entry, manifests)
        if secret:
            secret_env.add(entry["name"])
        local_value = localise(value)
        if value in _WILDCARD_HOSTS:
            local_value = "127.0.0.1"
            differences.append(f"{entry['name']}={value} binds 127.0.0.1 here (the Pod has its own network)")
        env[entry["name"]] = local_value
    ports = {p.get("name", str(p["containerPort"])): int(p["containerPort"]) for p in container.get("ports") or []}
    probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
    return LocalPlan(
        argv=(*entrypoint, *(localise(str(a)) for a in container.get("args") or [])),
        env=env,
        root=root,
        ports=ports,
        readiness_path=str(probe.get("path", "/readyz")),
        grace_seconds=float(pod.get("terminationGracePeriodSeconds", 30)),
        differences=tuple(differences),
        secret_env=frozenset(secret_env),
        readiness_port=str(probe.get("port", "http")),
        readiness_scheme=str(probe.get("scheme", "HTTP")),
    )


def plan_local_run(manifests: Sequence[Manifest], *, root: Path, entrypoint: Sequence[str]) -> LocalPlan:
    """Lay out the server Pod's files under ``root`` and plan the process.

    Raises:
        LocalRunError: the Deployment uses something a local process cannot have.
        DeployerError: the manifests hold no single Deployment.
    """
    deployments = find(manifests, "Deployment")
    if len(deployments) != 1:
        raise LocalRunError(f"a local run needs exactly one Deployment in the manifests, found {len(deployments)}")
    pod = deployments[0]["spec"]["template"]["spec"]
    return _plan_pod(pod, manifests, root=root, entrypoint=entrypoint, image_runs="python -m app")


def plan_tester_run(
    manifests: Sequence[Manifest], server: LocalPlan, *, root: Path, entrypoint: Sequence[str]
) -> LocalPlan:
    """Plan the chart's tester Pod (``helm.sh/hook: test``) as a local process against the local server: its own
    args and mounted Secrets, with each Service's cluster DNS name and port turned into 127.0.0.1 and the
    server's container port the Service targets.

    Raises:
        LocalRunError: the chart renders no single tester Pod, or a Service targets a port the server lacks.
    """
    testers = [m for m in find(manifests, "Pod") if hook_of(m) in {"test", "test-success"}]
    if len(testers) != 1:
        raise LocalRunError(f"the chart must render exactly one tester Pod (helm.sh/hook: test), found {len(testers)}")
    addresses: dict[str, str] = {}
    for service in find(manifests, "Service"):
        name, namespace = service["metadata"]["name"], service["metadata"].get("namespace", "default")
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            local = server.ports.get(str(target)) if isinstance(target, str) else int(target)
            if local is None:
                raise LocalRunError(f"Service {name} targets port {target!r}, which the server container lacks")
            for host in (f"{name}.{namespace}.svc.cluster.local", f"{name}.{namespace}.svc", f"{name}.{namespace}"):
                addresses[f"{host}:{port['port']}"] = f"127.0.0.1:{local}"

    def translate(value: str) -> str:
        for address in sorted(addresses, key=len, reverse=True):
            value = re.sub(rf"(?<=//){re.escape(address)}(?=/|$)", addresses[address], value)
        return value

    note = "Service DNS names resolve to the local server on 127.0.0.1 here (no cluster DNS)"
    return _plan_pod(testers[0]["spec"], manifests, root=root, entrypoint=entrypoint, image_runs="python -m verify",
                     translate=translate, notes=(note,))  # fmt: skip


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _answers_ok(url: str) -> bool:
    """Whether a GET of the loopback URL answers 200; over https the certificate is not checked (nor does the
    kubelet check it)."""
    unverified = ssl._create_unverified_context() if url.startswith("https:") else None  # noqa: S323 - a probe
    try:
        with urllib.request.urlopen(url, timeout=1, context=unverified) as response:  # noqa: S310 - built here
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class LocalServer:
    """The planned server as a child process: start, wait until ready, stop with the Pod's grace period."""

    def __init__(self, plan: LocalPlan, log_path: Path) -> None:
        self.plan = plan
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start the process and wait until its readiness probe answers 200.

        Raises:
            LocalRunError: a port is taken, the process exits, or it is not ready in time.
        """
        taken = [f"{name} ({port})" for name, port in self.plan.ports.items() if _port_in_use(port)]
        if taken:
            raise LocalRunError(
                f"port already in use on 127.0.0.1: {', '.join(taken)}; stop what listens there, "
                "or choose other ports with service.port and service.metricsPort in the values file"
            )
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.plan.argv, env=dict(self.plan.env), cwd=self.plan.root, stdout=self._log, stderr=subprocess.STDOUT
        )
        url = self.plan.readiness_url()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalRunError(
                    f"the server exited with code {self._process.returncode} before it was ready:\n{self.log_tail()}"
                )
            if _answers_ok(url):
                return
            time.sleep(0.1)
        raise LocalRunError(f"the server was not ready at {url} within {ready_timeout:g} s:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after the grace period; returns the exit code."""
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.plan.grace_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
        return process.returncode

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote."""
        if self._log is not None:
            self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def default_entrypoint() -> tuple[str, ...]:
    """The image's entrypoint, run with this interpreter."""
    return (sys.executable, "-m", "app")
