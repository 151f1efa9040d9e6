"""A real node for a control plane of tests/kube.py: kube-scheduler and a kubelet (v1.20.2, built-in Docker runtime)
that run Pods as real containers on a Docker engine of their own, from images built on this machine.

What this machine lacks, and how the node makes up for it with Kubernetes' own mechanisms (nothing in the chart or
the product changes):

* No CNI plugin, no kube-proxy, no cluster DNS. Pods without a network of their own get no IP (kubelet 1.20 then
  recreates their sandbox forever), so a mutating admission webhook, served here over HTTPS with a certificate of the
  control plane's CA, puts every Pod of a namespace labelled ``erlmcp.test/host-network=true`` on the host network:
  ``hostNetwork``, ``dnsPolicy: ClusterFirstWithHostNet``, ``hostPort`` = ``containerPort``, ``hostAliases`` that map
  the namespace's Service names (``svc``, ``svc.ns``, ``svc.ns.svc``, ``svc.ns.svc.cluster.local``) to 127.0.0.1,
  and ``KUBERNETES_SERVICE_HOST``/``PORT`` pointing at the API server. Service ports must therefore equal their
  target ports, and be free on this machine. The app's own settings are left exactly as the chart renders them: a
  server listening on 0.0.0.0 in its Pod listens on every address of this machine here (rewriting that to
  127.0.0.1 was tried, and changed the product: a server bound to loopback accepts only loopback Host names, and
  answered the Service names with 421).
* The VM forbids negative oom_score_adj: the engine runs containers through scripts/runc-clamp.
* Node IPs must not be loopback, yet nothing else may be used: the node is *named* ``127.0.0.1``
  (--hostname-override), which kubelet takes as its address as is; the API server then reaches the kubelet on
  127.0.0.1 and ``kubectl logs`` (a tester Pod's log) works.
* No registry: the images are built locally (scripts/build-images.sh) and copied into the node's engine
  (:meth:`Node.load_images`); the Pod sandbox image holds only the static ``pause`` program (scripts/install-kube.sh).

kubelet changes host state the tests must give back: six kernel tunables (vm.overcommit_memory, kernel.panic, ...,
which it sets unless told to protect them, and then it refuses to start), Pod log folders under /var/log, tmpfs
mounts for Secret volumes. :meth:`Node.stop` restores and removes all of it, in the order that leaves nothing
(workloads, kubelet and scheduler, containers, mounts, engine); :meth:`Node.leftovers` says what is still there.
kubelet's iptables chains are not made at all (``makeIPTablesUtilChains: false``).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import os
import signal
import ssl
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client, config

from deployer.marketplace.cluster import Cluster
from deployer.marketplace.local import free_ports
from tests.kube import BIN, ControlPlane, serving_certificate

ROOT = Path(__file__).resolve().parents[1]
NODE_NAME = "127.0.0.1"
HOST_NETWORK_LABEL = "erlmcp.test/host-network"
PAUSE_IMAGE = "erlmcp-local/pause:3.2"
WEBHOOK_NAME = "erlmcp-test-host-network"
ENGINE_STATE = Path(os.environ.get("ERLMCP_CACHE", Path.home() / ".cache" / "erlmcp-tools")) / "docker-node"
# What kubelet's container manager sets when kernel defaults are not protected (and pod networking's bridge rule).
KERNEL_TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/bridge/bridge-nf-call-iptables",
                   "net/bridge/bridge-nf-call-ip6tables")  # fmt: skip
POD_LOG_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))
IPTABLES_TABLES = ("filter", "nat", "mangle")


class NodeUnavailable(Exception):
    """The container engine cannot run on this machine (the tests skip with this message)."""


def node_binaries_missing() -> list[str]:
    """The node programs that are not installed (scripts/install-kube.sh builds them)."""
    return [name for name in ("kube-scheduler", "kubelet", "kube-pause") if not (BIN / name).exists()]


def _run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 120,
         check: bool = True, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    done = subprocess.run(command, env=env, input=stdin, capture_output=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return done


def engine_start(state: Path, *, runc_clamp: bool = False) -> tuple[dict[str, str], bool]:
    """A Docker engine (scripts/container-engine.sh): the environment that reaches it, and whether this call
    started it (False: it was running already).

    Raises:
        NodeUnavailable: the engine cannot run here (the script's exit 3).
    """
    script = ["bash", str(ROOT / "scripts/container-engine.sh")]
    _run([*script, "install"], timeout=600, check=False)
    host = f"unix://{state / 'docker.sock'}"
    env = {**os.environ, "DOCKER_HOST": host}
    was_running = _run(["docker", "version"], env=env, check=False).returncode == 0
    started = _run([*script, "start", "--state", str(state), *(["--runc-clamp"] if runc_clamp else [])], check=False)
    if started.returncode == 3:
        raise NodeUnavailable(started.stderr.decode(errors="replace").strip())
    if started.returncode != 0:
        raise RuntimeError(f"container-engine.sh start: {started.stderr.decode(errors='replace')}")
    return env, not was_running


def engine_stop(state: Path) -> None:
    _run(["bash", str(ROOT / "scripts/container-engine.sh"), "stop", "--state", str(state)], check=False)


def _image_id(env: dict[str, str], image: str) -> str | None:
    found = _run(["docker", "image", "inspect", "--format", "{{.Id}}", image], env=env, check=False)
    return found.stdout.decode().strip() if found.returncode == 0 else None


# -- the admission webhook ---------------------------------------------------------------------------------------


def host_network_patch(pod: dict[str, Any], service_names: list[str], api_port: int) -> list[dict[str, Any]]:
    """The JSON patch that puts ``pod`` on the host network (see the module's docstring)."""
    spec = pod.get("spec") or {}
    patch: list[dict[str, Any]] = [
        {"op": "add", "path": "/spec/hostNetwork", "value": True},
        {"op": "add", "path": "/spec/dnsPolicy", "value": "ClusterFirstWithHostNet"},
    ]
    if service_names:
        aliases = [*(spec.get("hostAliases") or []), {"ip": "127.0.0.1", "hostnames": service_names}]
        patch.append({"op": "add", "path": "/spec/hostAliases", "value": aliases})
    api = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api_port)}
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            env = [item for item in container.get("env") or [] if item.get("name") not in api]
            env += [{"name": name, "value": value} for name, value in api.items()]
            patch.append({"op": "add", "path": f"/spec/{group}/{index}/env", "value": env})
            ports = container.get("ports") or []
            if ports:
                ports = [{**port, "hostPort": port["containerPort"]} for port in ports]
                patch.append({"op": "add", "path": f"/spec/{group}/{index}/ports", "value": ports})
    return patch


def service_host_names(names: list[str], namespace: str) -> list[str]:
    """The cluster DNS names of the namespace's Services."""
    found = []
    for name in names:
        found += [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    return found


class HostNetworkWebhook:
    """The mutating admission webhook: HTTPS on 127.0.0.1, registered as a MutatingWebhookConfiguration for Pods
    created in namespaces labelled ``erlmcp.test/host-network=true``."""

    def __init__(self, plane: ControlPlane) -> None:
        assert plane.kubeconfig is not None
        self._plane = plane
        self._cluster = Cluster.connect(kubeconfig=plane.kubeconfig)
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _review(self, review: dict[str, Any]) -> dict[str, Any]:
        request = review["request"]
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        pod, namespace = request.get("object") or {}, request.get("namespace") or ""
        if request.get("kind", {}).get("kind") == "Pod" and request.get("operation") == "CREATE":
            with self._lock:
                services = [s["metadata"]["name"] for s in self._cluster.list("v1", "Service", namespace, labels={})]
            patch = host_network_patch(pod, service_host_names(services, namespace), self._plane.api_port)
            response |= {"patchType": "JSONPatch", "patch": base64.b64encode(orjson.dumps(patch)).decode()}
        return {"apiVersion": review.get("apiVersion", "admission.k8s.io/v1"), "kind": "AdmissionReview",
                "response": response}  # fmt: skip

    def start(self) -> None:
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    answer, status = orjson.dumps(webhook._review(orjson.loads(body))), 200
                except Exception as exc:  # the API server shows the message; failurePolicy Fail refuses the Pod
                    answer, status = f"webhook failed: {exc!r}".encode(), 500
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                pass

        certificate, key = serving_certificate(self._plane.pki, "host-network-webhook")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        port = self._server.server_address[1]
        ca = base64.b64encode((self._plane.pki / "ca.crt").read_bytes()).decode()
        self._cluster.apply({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": WEBHOOK_NAME},
            "webhooks": [{
                "name": "host-network.erlmcp.test",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": ca},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {HOST_NETWORK_LABEL: "true"}},
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10, "reinvocationPolicy": "Never",
            }],
        }, "")  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._cluster.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", WEBHOOK_NAME, "")
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._cluster.close()


# -- the node -------------------------------------------------------------------------------------------------------


def _sysctls() -> dict[str, str]:
    found = {}
    for name in KERNEL_TUNABLES:
        with contextlib.suppress(OSError):
            found[name] = (Path("/proc/sys") / name).read_text().strip()
    return found


def _iptables_rules() -> set[tuple[str, str]]:
    rules = set()
    for table in IPTABLES_TABLES:
        listed = _run(["iptables", "-t", table, "-S"], check=False)
        rules |= {(table, line) for line in listed.stdout.decode().splitlines() if "KUBE-" in line}
    return rules


def _pod_log_entries() -> set[Path]:
    return {entry for folder in POD_LOG_DIRS if folder.exists() for entry in [folder, *folder.iterdir()]}


def _mounts_under(root: Path) -> list[str]:
    prefix = f"{root.resolve()}/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return points


@dataclass
class Node:
    """kube-scheduler + kubelet (node ``127.0.0.1``) next to ``plane``, Pods on a Docker engine in ``engine_state``
    (kept between runs, so loaded images stay), kubelet's files in ``root``."""

    plane: ControlPlane
    root: Path
    engine_state: Path = ENGINE_STATE
    env: dict[str, str] = field(default_factory=dict)  # reaches the node's engine (DOCKER_HOST)
    webhook: HostNetworkWebhook | None = None
    started_in: float = 0.0
    _engine_started: bool = False
    _processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _sysctls: dict[str, str] = field(default_factory=dict)
    _iptables: set[tuple[str, str]] = field(default_factory=set)
    _pod_logs: set[Path] = field(default_factory=set)
    _api: client.ApiClient | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Engine, webhook, scheduler, kubelet; returns when the node is Ready. If anything fails to come up, what
        did start is stopped before raising.

        Raises:
            NodeUnavailable: the container engine cannot run on this machine.
        """
        began = time.monotonic()
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def _start(self, timeout: float) -> None:
        assert self.plane.kubeconfig is not None
        self.root.mkdir(parents=True, exist_ok=True)
        self._sysctls, self._iptables, self._pod_logs = _sysctls(), _iptables_rules(), _pod_log_entries()
        self.env, self._engine_started = engine_start(self.engine_state, runc_clamp=True)
        self._pause_image()
        self._api = config.new_client_from_config(config_file=str(self.plane.kubeconfig))  # type: ignore[no-untyped-call]
        self.webhook = HostNetworkWebhook(self.plane)
        self.webhook.start()
        self._spawn("kube-scheduler", [
            str(BIN / "kube-scheduler"), "--kubeconfig", str(self.plane.kubeconfig), "--leader-elect=false",
            "--bind-address", "127.0.0.1", "--port", "0", "--secure-port", "0",
        ])  # fmt: skip
        kubelet = self.root / "kubelet"
        port, healthz_port = free_ports(2)
        settings = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
            # Only the API server calls it, on loopback; it presents no client certificate (none is configured).
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "failSwapOn": False, "evictionHard": {},  # no evictions on a shared, busy build machine
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,  # never delete the local images
            "staticPodPath": "", "clusterDomain": "cluster.local", "clusterDNS": [],
            "resolvConf": "/etc/resolv.conf", "makeIPTablesUtilChains": False,
        }  # fmt: skip
        (self.root / "kubelet-config.json").write_bytes(orjson.dumps(settings))
        shim = self.root / "dockershim.sock"
        self._spawn("kubelet", [
            str(BIN / "kubelet"), "--config", str(self.root / "kubelet-config.json"),
            "--kubeconfig", str(self.plane.kubeconfig), "--root-dir", str(kubelet),
            "--container-runtime", "docker", "--docker-endpoint", self.env["DOCKER_HOST"],
            "--container-runtime-endpoint", f"unix://{shim}", "--image-service-endpoint", f"unix://{shim}",
            "--experimental-dockershim-root-directory", str(self.root / "dockershim"),
            "--pod-infra-container-image", PAUSE_IMAGE, "--hostname-override", NODE_NAME,
        ])  # fmt: skip
        self._wait_ready(timeout)
        self._wait_webhook(timeout)

    def _pause_image(self) -> None:
        if _image_id(self.env, PAUSE_IMAGE):
            return
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(str((BIN / "kube-pause").resolve()), arcname="pause")
        _run(["docker", "import", "--change", 'ENTRYPOINT ["/pause"]', "-", PAUSE_IMAGE], env=self.env,
             stdin=archive.getvalue())  # fmt: skip

    def load_images(self, images: list[str], source: dict[str, str]) -> None:
        """Copy images from the engine ``source`` reaches into the node's (skipped when already the same)."""
        for image in images:
            wanted = _image_id(source, image)
            if wanted is None:
                raise RuntimeError(f"{image} is not in the engine at {source.get('DOCKER_HOST')}")
            if _image_id(self.env, image) == wanted:
                continue
            with subprocess.Popen(["docker", "save", image], env=source, stdout=subprocess.PIPE) as save:
                loaded = subprocess.run(["docker", "load", "--quiet"], env=self.env, stdin=save.stdout,
                                        capture_output=True, timeout=600, check=False)  # fmt: skip
            if loaded.returncode != 0 or save.returncode != 0:
                raise RuntimeError(f"copying {image} into the node's engine: {loaded.stderr.decode()}")
        _run(["docker", "image", "prune", "--force"], env=self.env, check=False)  # what the new copies replaced

    def image_id(self, image: str) -> str | None:
        """The ID (sha256:...) of an image in the node's engine, or None when it is not there."""
        return _image_id(self.env, image)

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.root / f"{name}.log").open("wb") as log:
            self._processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _check_processes(self) -> None:
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {self.log_tail(name)}")

    def _wait_ready(self, timeout: float) -> None:
        core = client.CoreV1Api(self._api)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_processes()
            with contextlib.suppress(client.ApiException):
                status = core.read_node(NODE_NAME).status
                if status and any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"node {NODE_NAME} not Ready within {timeout} s: {self.log_tail('kubelet')}")

    def _wait_webhook(self, timeout: float) -> None:
        """Until the API server calls the webhook (it reads webhook configurations asynchronously): a dry-run Pod in
        a labelled namespace comes back on the host network."""
        core = client.CoreV1Api(self._api)
        probe = "erlmcp-webhook-probe"
        with contextlib.suppress(client.ApiException):
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=probe, labels={HOST_NETWORK_LABEL: "true"}))
            )
        container = client.V1Container(name="c", image=PAUSE_IMAGE)
        pod = client.V1Pod(metadata=client.V1ObjectMeta(name="probe"), spec=client.V1PodSpec(containers=[container]))
        deadline = time.monotonic() + timeout
        try:
            while True:
                with contextlib.suppress(client.ApiException):
                    spec = core.create_namespaced_pod(probe, pod, dry_run="All").spec
                    if spec is not None and spec.host_network:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError("the API server does not call the host-network webhook")
                time.sleep(0.3)
        finally:
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(probe)

    def log_tail(self, name: str, lines: int = 15) -> str:
        log = self.root / f"{name}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def containers(self) -> list[dict[str, Any]]:
        """The node engine's containers (``docker ps -a``), as JSON."""
        listed = _run(["docker", "ps", "--all", "--no-trunc", "--format", "{{json .}}"], env=self.env)
        return [orjson.loads(line) for line in listed.stdout.splitlines() if line.strip()]

    # -- teardown ----------------------------------------------------------------------------------------------

    def _delete_pods(self, timeout: float = 60.0) -> None:
        """Delete the Pods bound to this node and let kubelet stop their containers and unmount their volumes."""
        kubelet = self._processes.get("kubelet")
        if self._api is None or kubelet is None or kubelet.poll() is not None:
            return
        core = client.CoreV1Api(self._api)
        with contextlib.suppress(client.ApiException):
            for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}").items:
                metadata = pod.metadata
                if metadata is None or not metadata.name or not metadata.namespace:
                    continue
                with contextlib.suppress(client.ApiException):
                    core.delete_namespaced_pod(metadata.name, metadata.namespace, grace_period_seconds=0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [c for c in self.containers() if c.get("State") == "running"]
            if not running and not _mounts_under(self.root / "kubelet" / "pods"):  # (kubelet bind-mounts its root)
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Leave nothing: Pods, then kubelet and the scheduler, containers, mounts, the engine (when this node
        started it), kernel tunables, iptables rules and Pod log folders as they were."""
        self._terminate([p for name, p in self._processes.items() if name == "kube-scheduler"])  # no new Pods
        if self.env:
            with contextlib.suppress(Exception):
                self._delete_pods()
        self._terminate(list(self._processes.values()))
        if self.env and _run(["docker", "version"], env=self.env, check=False).returncode == 0:
            ids = [c["ID"] for c in self.containers()]
            if ids:
                _run(["docker", "rm", "--force", "--volumes", *ids], env=self.env, check=False)
        for point in reversed(_mounts_under(self.root)):
            if _run(["umount", point], check=False).returncode != 0:
                _run(["umount", "--lazy", point], check=False)
        if self.webhook is not None:
            self.webhook.stop()
            self.webhook = None
        if self._engine_started:
            engine_stop(self.engine_state)
            self._engine_started = False
        self._restore_host()
        if self._api is not None:
            self._api.close()  # type: ignore[no-untyped-call]
            self._api = None

    def _terminate(self, processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def _restore_host(self) -> None:
        for name, value in self._sysctls.items():
            path = Path("/proc/sys") / name
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(f"{value}\n")
        for table, rule in sorted(_iptables_rules() - self._iptables, key=lambda item: not item[1].startswith("-A")):
            words = rule.split()
            if words[0] == "-A":  # rules first, then the chains they jumped to
                _run(["iptables", "-t", table, "-D", *words[1:]], check=False)
            elif words[0] == "-N":
                _run(["iptables", "-t", table, "-F", words[1]], check=False)
                _run(["iptables", "-t", table, "-X", words[1]], check=False)
        for entry in sorted(_pod_log_entries() - self._pod_logs, key=lambda path: len(path.parts), reverse=True):
            if entry.is_symlink() or entry.is_file():
                entry.unlink(missing_ok=True)
            elif entry.is_dir():
                subprocess.run(["rm", "-rf", "--one-file-system", str(entry)], check=False)

    def leftovers(self) -> list[str]:
        """What the node left behind after :meth:`stop` (empty when nothing)."""
        left = [f"process {name} still running" for name, p in self._processes.items() if p.poll() is None]
        left += [f"mount {point}" for point in _mounts_under(self.root)]
        left += [f"sysctl {name} = {value} (was {self._sysctls[name]})" for name, value in _sysctls().items()
                 if name in self._sysctls and value != self._sysctls[name]]  # fmt: skip
        left += [f"iptables -t {table} {rule}" for table, rule in sorted(_iptables_rules() - self._iptables)]
        left += [f"pod log entry {entry}" for entry in sorted(_pod_log_entries() - self._pod_logs)]
        if self.env and _run(["docker", "version"], env=self.env, check=False).returncode == 0:
            left += [f"container {c['Names']} ({c['State']})" for c in self.containers()]
        return left
