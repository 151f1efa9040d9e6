"""Run the rendered chart's Pods as local processes, configured exactly as the Pods would be.

What a Pod gets, its process gets: the container's env (values, ConfigMap and Secret references), its
ConfigMap, Secret, projected and emptyDir volumes laid out under a private folder, and its ports. Paths under a
mount point in env values are moved under that folder. What differs, each plan lists: the image's entrypoint is
this machine's program (``python -m app``, Debian's ``redis-server``); a listener on 0.0.0.0 (all interfaces of
the Pod's own network namespace) binds 127.0.0.1, which is what that means on a shared machine; a Service's
cluster DNS name, in env values, args and mounted files, is the local address that stands for the Service.

With ``sessions.store: redis`` the chart also renders a Redis Deployment: it runs as ``redis-server`` with the
redis.conf the chart rendered, changed only where a local run must (its port, bind address and data folder:
:func:`local_redis_config`). With more than one replica, each server process gets ports of its own (each Pod
has its own network, these processes share one) and a round-robin proxy listens where each of the server's
Services would, spreading connections over the replicas as kube-proxy does.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from deployer.errors import DeployerError, LocalRunError
from deployer.marketplace.application import hook_of
from deployer.marketplace.manifests import Manifest, find, find_one
from deployer.marketplace.proxy import RoundRobinProxy

__all__ = [
    "LocalDeployment",
    "LocalPlan",
    "LocalRedis",
    "LocalRun",
    "LocalServer",
    "ProxyPlan",
    "RedisPlan",
    "ServiceAddresses",
    "Stopped",
    "local_redis_config",
    "plan_local_deployment",
    "plan_local_run",
    "plan_redis_run",
    "plan_tester_run",
    "replica_count",
]

_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}  # noqa: S104 - these are recognised, not bound
_COMPONENT = "app.kubernetes.io/component"
_TO_THE_SERVER = "Service DNS names resolve to the local server on 127.0.0.1 here (no cluster DNS)"
_INSTALL_REDIS = "run scripts/install-redis.sh (Debian's redis-server package; make setup does)"


# -- Services: cluster DNS names and the local addresses that stand for them -----------------------------------


def _in_url(address: str) -> re.Pattern[str]:
    """``address`` as a URL's host and port: after ``//`` or a user info's ``@``, before a ``/`` or the end."""
    return re.compile(rf"(?:(?<=//)|(?<=@)){re.escape(address)}(?=/|$)")


@dataclass(frozen=True, slots=True)
class ServiceAddresses:
    """Services' cluster DNS names with a port (``name.ns.svc:6379``), each to the local address that stands for
    it (``127.0.0.1:41234``)."""

    local: Mapping[str, str] = field(default_factory=dict)

    def translate(self, value: str) -> str:
        """``value`` with every address that follows ``//`` or ``@`` (a URL's host, after its user info) and ends
        the value or comes before a ``/`` turned into its local address."""
        for address in self.named_in(value):
            value = _in_url(address).sub(self.local[address], value)
        return value

    def named_in(self, value: str) -> list[str]:
        """The addresses :meth:`translate` would change in ``value``, longest first."""
        return [address for address in sorted(self.local, key=len, reverse=True) if _in_url(address).search(value)]

    def __or__(self, other: ServiceAddresses) -> ServiceAddresses:
        return ServiceAddresses({**self.local, **other.local})


@dataclass(frozen=True, slots=True)
class _ServicePort:
    """One port of a Service."""

    name: str
    namespace: str
    port: int
    target: str | int

    def addresses(self) -> list[str]:
        return [
            f"{host}:{self.port}"
            for host in (
                f"{self.name}.{self.namespace}.svc.cluster.local",
                f"{self.name}.{self.namespace}.svc",
                f"{self.name}.{self.namespace}",
            )
        ]


def _service_ports(manifests: Sequence[Manifest], labels: Mapping[str, str]) -> list[_ServicePort]:
    """The ports of the Services whose selector picks Pods with these labels."""
    found = []
    for service in find(manifests, "Service"):
        selector = service["spec"].get("selector") or {}
        if not selector or any(labels.get(key) != value for key, value in selector.items()):
            continue
        name, namespace = service["metadata"]["name"], service["metadata"].get("namespace", "default")
        found += [
            _ServicePort(name, namespace, int(p["port"]), p.get("targetPort", p["port"]))
            for p in service["spec"].get("ports") or []
        ]
    return found


def _addresses_of(service_ports: Sequence[_ServicePort], local_port: Mapping[str, int]) -> ServiceAddresses:
    """Each Service port's DNS names to 127.0.0.1 and the local port of its Service port's name (``name:port``)."""
    return ServiceAddresses(
        {address: f"127.0.0.1:{local_port[f'{p.name}:{p.port}']}" for p in service_ports for address in p.addresses()}
    )


# -- Planning one Pod ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """How to start one Pod's container locally, and how to probe it."""

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
    labels: Mapping[str, str] = field(default_factory=dict)  # the Pod's labels (what Services select)
    container_ports: Mapping[str, int] = field(default_factory=dict)  # name -> port in the Pod (empty: ``ports``)

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

    def local_port(self, target: str | int) -> int | None:
        """The local port of a Service's ``targetPort`` (a container port name or number)."""
        if isinstance(target, str) and not target.isdigit():
            return self.ports.get(target)
        in_pod = self.container_ports or self.ports
        name = next((name for name, port in in_pod.items() if port == int(target)), None)
        return self.ports[name] if name is not None else int(target)

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


def _volume_sources(volume: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """The ConfigMaps and Secrets a volume shows: (kind, name, the volume's spec of it)."""
    if "configMap" in volume:
        return [("ConfigMap", volume["configMap"]["name"], volume["configMap"])]
    if "secret" in volume:
        return [("Secret", volume["secret"]["secretName"], volume["secret"])]
    if "projected" in volume:  # several ConfigMaps and Secrets in one folder
        sources = []
        for source in volume["projected"].get("sources") or []:
            kind = "ConfigMap" if "configMap" in source else "Secret" if "secret" in source else None
            if kind is None:
                raise LocalRunError(
                    f"volume {volume.get('name')!r} projects what a local run cannot provide: {', '.join(source)}"
                )
            spec = source["configMap" if kind == "ConfigMap" else "secret"]
            sources.append((kind, spec["name"], spec))
        return sources
    kinds = ", ".join(k for k in volume if k != "name")
    raise LocalRunError(f"volume {volume.get('name')!r} is of a kind a local run cannot provide: {kinds}")


def _lay_out_volume(
    volume: Mapping[str, Any], target: Path, manifests: Sequence[Manifest], addresses: ServiceAddresses
) -> dict[str, list[str]]:
    """Write one volume's files under ``target``, Service addresses in text files made local; returns the files
    (paths in the volume) where that changed something, with the addresses changed."""
    target.mkdir(parents=True, exist_ok=True)
    if "emptyDir" in volume:
        return {}
    localised: dict[str, list[str]] = {}
    for kind, name, spec in _volume_sources(volume):
        data = _source(manifests, kind, name)
        items = spec.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                raise LocalRunError(f"volume {volume.get('name')!r}: {kind} {name!r} has no key {item['key']!r}")
            content = data[item["key"]]
            try:
                named = addresses.named_in(content.decode())
            except UnicodeDecodeError:
                named = []
            if named:
                content = addresses.translate(content.decode()).encode()
                localised[item["path"]] = named
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(content)
    return localised


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
    template: Mapping[str, Any],
    manifests: Sequence[Manifest],
    *,
    root: Path,
    entrypoint: Sequence[str],
    image_runs: str,
    addresses: ServiceAddresses | None = None,
    notes: Sequence[str] = (),
) -> LocalPlan:
    """Lay out one Pod's files under ``root`` and plan its first container as a process."""
    addresses = addresses or ServiceAddresses()
    pod = template["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    differences = [f"entrypoint: {' '.join(entrypoint)} (the image runs {image_runs})", *notes]
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise LocalRunError(f"volumeMount {mount['name']!r} names no volume of the Pod")
        local = root / mount["mountPath"].lstrip("/")
        for path, named in _lay_out_volume(volume, local, manifests, addresses).items():
            differences += [
                f"{mount['mountPath'].rstrip('/')}/{path}: {address} is {addresses.local[address]} here "
                "(no cluster DNS)"
                for address in named
            ]
        mounts[mount["mountPath"]] = local

    def localise(value: str) -> str:
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(mounts[mount_path]) + value[len(mount_path.rstrip("/")) :]
        return addresses.translate(value)

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
        labels=dict((template.get("metadata") or {}).get("labels") or {}),
    )


def _deployments(manifests: Sequence[Manifest]) -> tuple[Manifest, Manifest | None]:
    """The server's Deployment, and the Redis one of ``sessions.store: redis`` (None without it).

    Raises:
        LocalRunError: there is not exactly one server Deployment, or more than one Redis.
    """
    deployments = find(manifests, "Deployment")
    redis = [d for d in deployments if (d["metadata"].get("labels") or {}).get(_COMPONENT) == "redis"]
    servers = [d for d in deployments if d not in redis]
    if len(servers) != 1:
        raise LocalRunError(f"a local run needs exactly one Deployment in the manifests, found {len(servers)}")
    if len(redis) > 1:
        raise LocalRunError(f"a local run runs at most one Redis Deployment, found {len(redis)}")
    return servers[0], (redis[0] if redis else None)


def replica_count(manifests: Sequence[Manifest]) -> int:
    """How many server Pods the chart asks for: the Deployment's replicas or, under a HorizontalPodAutoscaler
    (the Deployment then names none), its minReplicas."""
    deployment, _ = _deployments(manifests)
    if "replicas" in deployment["spec"]:
        return int(deployment["spec"]["replicas"])
    for hpa in find(manifests, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]:
            return int(hpa["spec"].get("minReplicas", 1))
    return 1


def plan_local_run(
    manifests: Sequence[Manifest], *, root: Path, entrypoint: Sequence[str], addresses: ServiceAddresses | None = None
) -> LocalPlan:
    """Lay out the server Pod's files under ``root`` and plan the process; Service addresses in ``addresses``
    (the Redis of ``sessions.store: redis``) become their local ones in its env, args and files.

    Raises:
        LocalRunError: the Deployment uses something a local process cannot have.
        DeployerError: the manifests hold no single Deployment.
    """
    deployment, _ = _deployments(manifests)
    return _plan_pod(
        deployment["spec"]["template"],
        manifests,
        root=root,
        entrypoint=entrypoint,
        image_runs="python -m app",
        addresses=addresses,
    )


# -- Redis (sessions.store: redis) -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisPlan:
    """The chart's Redis Pod as a local ``redis-server``, on ``port``, with the config file ``config``."""

    pod: LocalPlan
    port: int
    config: Path
    password: str | None = field(repr=False)  # the config's requirepass (for the readiness check)

    def describe(self) -> str:
        return self.pod.describe()


def redis_server_binary() -> str:
    """Debian's redis-server.

    Raises:
        LocalRunError: it is not installed.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise LocalRunError(f"sessions.store=redis runs a Redis, and redis-server is not installed: {_INSTALL_REDIS}")
    return binary


_LOCAL_DIRECTIVES = ("port", "bind", "dir")


def local_redis_config(text: str, *, port: int, data_dir: Path) -> tuple[str, tuple[str, ...]]:
    """The chart's redis.conf as a local run must have it, and what differs: ``port`` is a free loopback port,
    ``bind`` is 127.0.0.1 and ``dir`` a private folder (the Pod has a network and an emptyDir of its own). A
    directive the chart leaves out is added. Nothing else changes."""
    wanted = {"port": str(port), "bind": "127.0.0.1", "dir": str(data_dir)}
    why = {"port": "a free loopback port", "bind": "loopback only", "dir": "a private folder, for the Pod's emptyDir"}
    lines, notes, seen = [], [], set()
    for line in text.splitlines():
        directive, _, value = line.strip().partition(" ")
        if directive.lower() in wanted:
            seen.add(directive.lower())
            line = f"{directive.lower()} {wanted[directive.lower()]}"
            notes.append(
                f"redis.conf `{directive} {value.strip()}` is `{line}` here: {why[directive.lower()]} "
                "(the Pod has its own network and volumes)"
            )
        lines.append(line)
    for directive in (d for d in _LOCAL_DIRECTIVES if d not in seen):
        lines.append(f"{directive} {wanted[directive]}")
        notes.append(f"redis.conf has no `{directive}`: `{directive} {wanted[directive]}` is added here")
    return "\n".join(lines) + "\n", tuple(notes)


def _directive(text: str, name: str) -> str | None:
    """A redis.conf directive's value (the last one given), unquoted."""
    value = None
    for line in text.splitlines():
        directive, _, rest = line.strip().partition(" ")
        if directive.lower() == name:
            value = rest.strip().strip("\"'")
    return value


def plan_redis_run(manifests: Sequence[Manifest], *, root: Path, port: int | None = None) -> RedisPlan | None:
    """Lay out the chart's Redis Pod under ``root`` and plan it as a local ``redis-server`` with the chart's
    redis.conf, made local by :func:`local_redis_config` (``port``: where it listens, default a free port);
    None when the chart runs no Redis.

    Raises:
        LocalRunError: redis-server is not installed, or the Redis container names no config file.
    """
    _, deployment = _deployments(manifests)
    if deployment is None:
        return None
    pod = _plan_pod(
        deployment["spec"]["template"],
        manifests,
        root=root,
        entrypoint=(redis_server_binary(),),
        image_runs="its own redis-server",
    )
    config = next((Path(arg) for arg in pod.argv[1:] if arg.endswith(".conf") and Path(arg).is_file()), None)
    if config is None:
        raise LocalRunError(f"the Redis container's args name no config file: {' '.join(pod.argv[1:]) or 'none'}")
    text = config.read_text(encoding="utf-8")
    port = port or free_ports(1)[0]
    data_dir = pod.path_of(_directive(text, "dir") or "/data")
    data_dir.mkdir(parents=True, exist_ok=True)
    local_text, notes = local_redis_config(text, port=port, data_dir=data_dir)
    config.write_text(local_text, encoding="utf-8")
    pod = dataclasses.replace(
        pod, ports=dict.fromkeys(pod.ports, port), container_ports=pod.ports, differences=(*pod.differences, *notes)
    )
    return RedisPlan(pod=pod, port=port, config=config, password=_directive(text, "requirepass"))


def _redis_addresses(manifests: Sequence[Manifest], redis: RedisPlan) -> ServiceAddresses:
    service_ports = _service_ports(manifests, redis.pod.labels)
    return _addresses_of(service_ports, {f"{p.name}:{p.port}": redis.port for p in service_ports})


# -- The whole installation: Redis, the server replicas, the Services ------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyPlan:
    """A round-robin proxy standing for one port of a server Service: it listens on 127.0.0.1 at the Service's
    port and spreads connections over the replicas' ``backends``."""

    service: str
    port: int
    target: str
    backends: tuple[int, ...]

    def describe(self) -> str:
        over = ", ".join(f"replica {i} on {port}" for i, port in enumerate(self.backends, 1))
        return f"Service {self.service} port {self.port} ({self.target}): a round-robin proxy on it, over {over}"


@dataclass(frozen=True, slots=True)
class LocalDeployment:
    """What a local run of the rendered chart starts: the Redis of ``sessions.store: redis`` (else None), the
    server replicas, a proxy per port of the server's Services when there is more than one replica, and each
    Service's DNS names to the local address that stands for it."""

    servers: tuple[LocalPlan, ...]
    redis: RedisPlan | None
    proxies: tuple[ProxyPlan, ...]
    addresses: ServiceAddresses

    @property
    def single(self) -> bool:
        """One server and nothing else: the Pod of ``sessions.store: pod``."""
        return len(self.servers) == 1 and self.redis is None

    def summary(self) -> str:
        if self.single:
            return "its Pod"
        parts = ["Redis"] if self.redis else []
        parts.append(f"{len(self.servers)} server Pod{'s' if len(self.servers) > 1 else ''}")
        if self.proxies:
            parts.append("a round-robin proxy for each Service port")
        return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]

    def describe(self) -> str:
        """Every process and proxy, what it gets and how it differs from the cluster; secrets masked."""
        if self.single:
            return self.servers[0].describe()
        sections = [f"-- Redis (sessions.store=redis):\n{self.redis.describe()}"] if self.redis else []
        sections += [
            f"-- server Pod {i} of {len(self.servers)}:\n{plan.describe()}" for i, plan in enumerate(self.servers, 1)
        ]
        if self.proxies:
            lines = [proxy.describe() for proxy in self.proxies]
            lines.append(
                "differs: kube-proxy spreads a Service's connections over its Pods; here a round-robin "
                "proxy does, on the Service's port"
            )
            sections.append("-- Services:\n" + "\n".join(lines))
        return "\n".join(sections)

    def tester_note(self) -> str:
        if self.proxies:
            return (
                "Service DNS names resolve to the local proxy standing for each server Service (and to the local "
                "Redis) on 127.0.0.1 here (no cluster DNS)"
            )
        return _TO_THE_SERVER


def free_ports(count: int, avoid: frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct TCP ports nothing listens on right now, outside ``avoid``. Every socket stays bound
    until all are chosen: a port let go may be handed out again at once, so ports picked one at a time can repeat."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < count:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports


def _on_own_ports(plan: LocalPlan, replica: int, count: int, free: Iterator[int]) -> LocalPlan:
    """A replica's plan with free ports of its own (taken from ``free``) in place of the container's: in its port
    list, and in the env values and args that name one (``ERLMCP_PORT=8080``)."""
    ports = {name: next(free) for name in plan.ports}
    moved = {str(plan.ports[name]): str(port) for name, port in ports.items()}
    env = {key: value if key in plan.secret_env else moved.get(value, value) for key, value in plan.env.items()}
    notes = [
        f"{key}={plan.env[key]} is {env[key]} here: replica {replica} of {count} listens on ports of its own "
        "(each Pod has its own network; these processes share one)"
        for key in sorted(env)
        if env[key] != plan.env[key]
    ]
    return dataclasses.replace(
        plan,
        argv=tuple(moved.get(arg, arg) for arg in plan.argv),
        env=env,
        ports=ports,
        container_ports=plan.ports,
        differences=(*plan.differences, *notes),
    )


def plan_local_deployment(manifests: Sequence[Manifest], *, root: Path, entrypoint: Sequence[str]) -> LocalDeployment:
    """Plan the whole rendered installation under ``root``: with ``sessions.store: pod`` the one server Pod (its
    files directly under ``root``, its ports the container's), as :func:`plan_local_run`; with Redis, Redis under
    ``root/redis`` and each replica under ``root/server-N``, with ports of its own and proxies in front when there
    is more than one.

    Raises:
        LocalRunError: something a local run cannot provide (see :func:`plan_local_run`, :func:`plan_redis_run`).
    """
    server, _ = _deployments(manifests)
    labels = (server["spec"]["template"].get("metadata") or {}).get("labels") or {}
    service_ports = _service_ports(manifests, labels)
    redis = plan_redis_run(manifests, root=root / "redis")
    redis_addresses = _redis_addresses(manifests, redis) if redis else ServiceAddresses()
    count = replica_count(manifests)
    servers: tuple[LocalPlan, ...]
    if redis is None and count == 1:
        servers = (plan_local_run(manifests, root=root, entrypoint=entrypoint),)
    else:
        servers = tuple(
            plan_local_run(manifests, root=root / f"server-{i}", entrypoint=entrypoint, addresses=redis_addresses)
            for i in range(1, count + 1)
        )
    if count == 1:
        local = {f"{p.name}:{p.port}": _target_port(servers[0], p) for p in service_ports}
        return LocalDeployment(servers, redis, (), _addresses_of(service_ports, local) | redis_addresses)
    avoid = frozenset({p.port for p in service_ports} | ({redis.port} if redis else set()))
    free = iter(free_ports(sum(len(plan.ports) for plan in servers), avoid))
    servers = tuple(_on_own_ports(plan, i, count, free) for i, plan in enumerate(servers, 1))
    proxies = tuple(
        ProxyPlan(p.name, p.port, str(p.target), tuple(_target_port(s, p) for s in servers)) for p in service_ports
    )
    local = {f"{p.name}:{p.port}": p.port for p in service_ports}
    return LocalDeployment(servers, redis, proxies, _addresses_of(service_ports, local) | redis_addresses)


def _target_port(server: LocalPlan, service_port: _ServicePort) -> int:
    port = server.local_port(service_port.target)
    if port is None:
        raise LocalRunError(
            f"Service {service_port.name} targets port {service_port.target!r}, which the server container lacks"
        )
    return port


def plan_tester_run(
    manifests: Sequence[Manifest], server: LocalPlan | LocalDeployment, *, root: Path, entrypoint: Sequence[str]
) -> LocalPlan:
    """Plan the chart's tester Pod (``helm.sh/hook: test``) as a local process against the local run: its own
    args and mounted Secrets, with each Service's cluster DNS name and port turned into the local address that
    stands for it (the server's port the Service targets, or the proxy in front of the replicas).

    Raises:
        LocalRunError: the chart renders no single tester Pod, or a Service targets a port the server lacks.
    """
    testers = [m for m in find(manifests, "Pod") if hook_of(m) in {"test", "test-success"}]
    if len(testers) != 1:
        raise LocalRunError(f"the chart must render exactly one tester Pod (helm.sh/hook: test), found {len(testers)}")
    if isinstance(server, LocalPlan):
        service_ports = _service_ports(manifests, server.labels)
        local = {f"{p.name}:{p.port}": _target_port(server, p) for p in service_ports}
        addresses, note = _addresses_of(service_ports, local), _TO_THE_SERVER
    else:
        addresses, note = server.addresses, server.tester_note()
    return _plan_pod(
        testers[0],
        manifests,
        root=root,
        entrypoint=entrypoint,
        image_runs="python -m verify",
        addresses=addresses,
        notes=(note,),
    )


# -- Running ---------------------------------------------------------------------------------------------------


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


def _resp(*words: str) -> bytes:
    """One Redis command in RESP."""
    return f"*{len(words)}\r\n".encode() + b"".join(f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words)


def _redis_pongs(port: int, password: str | None) -> bool:
    """Whether the Redis on the loopback port answers PING with PONG (after AUTH, when it has a password): what
    the chart's readiness probe, ``redis-cli ping``, asks."""
    commands = ([_resp("AUTH", password)] if password else []) + [_resp("PING")]
    reply = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"".join(commands))
            while reply.count(b"\r\n") < len(commands):
                chunk = connection.recv(4096)
                if not chunk:
                    return False
                reply += chunk
    except OSError:
        return False
    return reply.split(b"\r\n")[len(commands) - 1] == b"+PONG"


class _LocalProcess:
    """A planned container as a child process: launch, wait until ready, stop with the Pod's grace period."""

    what = "the process"
    port_hint = "stop what listens there"

    def __init__(self, plan: LocalPlan, log_path: Path) -> None:
        self.plan = plan
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _ready(self) -> bool:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def launch(self) -> None:
        """Start the process (without waiting for it).

        Raises:
            LocalRunError: one of its ports is taken.
        """
        taken = [f"{name} ({port})" for name, port in self.plan.ports.items() if _port_in_use(port)]
        if taken:
            raise LocalRunError(f"port already in use on 127.0.0.1: {', '.join(taken)}; {self.port_hint}")
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            self.plan.argv, env=dict(self.plan.env), cwd=self.plan.root, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the readiness check passes.

        Raises:
            LocalRunError: the process exits, or is not ready in time.
        """
        assert self._process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalRunError(
                    f"{self.what} exited with code {self._process.returncode} before it was ready:\n{self.log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.1)
        raise LocalRunError(f"{self.what} was not ready at {self._where()} within {timeout:g} s:\n{self.log_tail()}")

    def start(self, ready_timeout: float = 30.0) -> None:
        """:meth:`launch`, then :meth:`wait_ready`."""
        self.launch()
        self.wait_ready(ready_timeout)

    def terminate(self) -> None:
        """SIGTERM, as the kubelet sends (nothing when the process is not running)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Wait for the process to exit, SIGKILL after the grace period; returns the exit code."""
        process = self._process
        if process is None:
            return 0
        try:
            process.wait(timeout=self.plan.grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._log is not None:
            self._log.close()
        return process.returncode

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after the grace period; returns the exit code."""
        self.terminate()
        return self.wait()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the process wrote."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class LocalServer(_LocalProcess):
    """The planned server as a child process, ready when its readiness probe answers 200."""

    what = "the server"
    port_hint = (
        "stop what listens there, or choose other ports with service.port and service.metricsPort in the values file"
    )

    def _ready(self) -> bool:
        return _answers_ok(self.plan.readiness_url())

    def _where(self) -> str:
        return self.plan.readiness_url()


class LocalRedis(_LocalProcess):
    """The planned Redis as a child ``redis-server``, ready when it answers PING (after AUTH)."""

    what = "redis-server"

    def __init__(self, plan: RedisPlan, log_path: Path) -> None:
        super().__init__(plan.pod, log_path)
        self.redis = plan

    def _ready(self) -> bool:
        return _redis_pongs(self.redis.port, self.redis.password)

    def _where(self) -> str:
        return f"127.0.0.1:{self.redis.port}"


@dataclass(frozen=True, slots=True)
class Stopped:
    """How a local run ended: each process's exit code, and the connections each proxy gave each replica."""

    servers: tuple[int, ...]
    redis: int | None
    served: tuple[tuple[ProxyPlan, tuple[int, ...]], ...]

    @property
    def clean(self) -> bool:
        return all(code == 0 for code in self.servers) and self.redis in (None, 0)


class LocalRun:
    """Start what a :class:`LocalDeployment` plans (the proxies, Redis, then the server replicas), with logs under
    ``log_dir``; stop it all on leaving the ``with`` block (the proxies, the replicas, then Redis)."""

    def __init__(self, deployment: LocalDeployment, log_dir: Path) -> None:
        self.deployment = deployment
        self.redis = LocalRedis(deployment.redis, log_dir / "redis.log") if deployment.redis else None
        names = (
            ["server.log"]
            if len(deployment.servers) == 1
            else [f"server-{i}.log" for i in range(1, len(deployment.servers) + 1)]
        )
        self.servers = [LocalServer(plan, log_dir / name) for plan, name in zip(deployment.servers, names, strict=True)]
        self.proxies = [RoundRobinProxy(plan.backends, port=plan.port) for plan in deployment.proxies]
        self.stopped: Stopped | None = None

    def start(self, ready_timeout: float = 30.0) -> None:
        """Listen where the Services would (the proxies), start Redis and wait until it answers, then start every
        replica and wait until each is ready.

        Raises:
            LocalRunError: a port is taken, or a process exits or is not ready in time.
        """
        for plan, proxy in zip(self.deployment.proxies, self.proxies, strict=True):
            try:
                proxy.start()
            except LocalRunError as exc:
                raise LocalRunError(f"Service {plan.service} port {plan.port}: {exc}; {LocalServer.port_hint}") from exc
        if self.redis is not None:
            self.redis.start(ready_timeout)
        for server in self.servers:
            server.launch()
        for server in self.servers:
            server.wait_ready(ready_timeout)

    def stop(self) -> Stopped:
        """Stop the proxies, then SIGTERM every replica at once and wait for each (the Pod's grace period), then
        Redis; returns how each ended (the first result again when called twice)."""
        if self.stopped is None:
            for proxy in self.proxies:
                proxy.stop()
            for server in self.servers:
                server.terminate()
            codes = tuple(server.wait() for server in self.servers)
            redis = self.redis.stop() if self.redis is not None else None
            served = tuple(
                (plan, tuple(proxy.served[port] for port in plan.backends))
                for plan, proxy in zip(self.deployment.proxies, self.proxies, strict=True)
            )
            self.stopped = Stopped(codes, redis, served)
        return self.stopped

    def __enter__(self) -> LocalRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def log_tails(self) -> str:
        """The last lines of every log."""
        processes: list[_LocalProcess] = [*([self.redis] if self.redis else []), *self.servers]
        if len(processes) == 1:
            return processes[0].log_tail()
        return "\n".join(f"-- {p.log_path.name}:\n{p.log_tail()}" for p in processes)


def default_entrypoint() -> tuple[str, ...]:
    """The image's entrypoint, run with this interpreter."""
    return (sys.executable, "-m", "app")
