"""The chart's Pod security context on one machine, without a container engine: the real server, configured as the
rendered Deployment configures it, runs under bubblewrap with this machine's root read-only, as UID and GID 1000,
with no capabilities, and writable only where the Pod has emptyDir volumes (/tmp and /var/run: tmpfs of their size
limits). The chart's own tester (the verify suite) passes against it; tools marked ``isolation: process`` run in
worker processes inside the sandbox; a probe in an identical sandbox finds every other path read-only, its identity
1000:1000 and every capability set empty; SIGTERM stops the server with exit 0 within the Pod's grace period.

How UID 1000 is real. Run as root (CI), bwrap needs no user namespace: it builds the mounts as root, then
``setpriv`` drops to 1000:1000 with no supplementary groups, every capability set empty (the bounding set too) and
no_new_privs, and execs the server, so the kernel sees UID 1000 as in a Pod without user namespaces. Run as another
user, bwrap makes an unprivileged user namespace that maps 1000 to that user (``--unshare-user --uid 1000 --gid
1000 --cap-drop ALL``); where the kernel forbids that, the test skips and says why.

Two things differ from the Pod. The ConfigMap and Secret volumes the chart mounts under /etc/erlmcp cannot get mount
points in a read-only bind of this machine's /etc, so they are bound read-only under /tmp/pod (/tmp/pod/etc/erlmcp/
...) and the env values naming them follow; and no seccomp filter is loaded (the Pod has RuntimeDefault).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import orjson
import pytest
import yaml

from deployer.marketplace.local import LocalPlan, free_ports, plan_local_run, plan_tester_run
from deployer.marketplace.manifests import Manifest, find
from deployer.marketplace.render import render
from deployer.marketplace.schema import load_schema
from tests.conftest import ROOT, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VOLUMES_AT = "/tmp/pod"  # where the Pod's read-only volumes appear in the sandbox (its /tmp is a tmpfs)
SIZE_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "k": 1000, "M": 1000**2, "G": 1000**3}

# Tools the built-in catalogue lacks: these run in the worker pool (``python -m app.runtime.worker``), so the
# isolated-tool path starts its processes inside the sandbox too.
WORKER_TOOLS = [
    {"name": "worker_uid", "description": "The worker process's UID.", "kind": "python", "function": "os:getuid",
     "isolation": "process"},
    {"name": "worker_pid", "description": "The worker process's PID.", "kind": "python", "function": "os:getpid",
     "isolation": "process"},
]  # fmt: skip

# Run in the sandbox: which folders take a new file (else the errno's name), who it is, and what it may do.
PROBE = r"""
import errno, json, os, subprocess, sys

def attempt(folder):
    path = os.path.join(folder, ".sandbox-probe")
    try:
        with open(path, "x"):
            pass
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    os.unlink(path)
    return "written"

def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()

status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
kinds = {}  # mount point -> the type of the filesystem on top there (mountinfo lists mounts in mount order)
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    kinds[fields[4]] = fields[fields.index("-") + 1]
print(json.dumps({
    "writes": {folder: attempt(folder) for folder in json.loads(sys.argv[1])},
    "id": [run("id", "-u"), run("id", "-g"), run("id", "-G")],
    "status": {key: status[key].split() for key in
               ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")},
    "writable": sorted([point, kind] for point, kind in kinds.items()
                       if os.path.exists(point) and not os.statvfs(point).f_flag & os.ST_RDONLY),
    "pid": os.getpid(),
}))
"""


def size_bytes(quantity: str) -> int:
    """A Kubernetes quantity (``64Mi``) in bytes."""
    for suffix, factor in SIZE_UNITS.items():
        if quantity.endswith(suffix) and quantity[: -len(suffix)].isdigit():
            return int(quantity[: -len(suffix)]) * factor
    return int(quantity)


def enterable(folder: Path, uid: int, gid: int) -> bool:
    """Whether uid:gid (no supplementary groups) may pass through the folder."""
    info = folder.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def first_closed_folder(path: Path, uid: int, gid: int) -> Path | None:
    """The first folder on the way to ``path`` (itself included) that uid:gid cannot enter."""
    for folder in [*reversed(path.parents), path]:
        if not enterable(folder, uid, gid):
            return folder
    return None


def folders_to(dest: str, under: str, made: set[str]) -> list[str]:
    """bwrap options that make the folders between ``under`` and ``dest`` (neither included) 0755, as an image has
    them: bwrap makes the missing parents of a mount point 0700, which shuts UID 1000 out when bwrap runs as root."""
    options: list[str] = []
    for folder in map(str, reversed(PurePosixPath(dest).parents)):
        if folder.startswith(under.rstrip("/") + "/") and folder not in made:
            made.add(folder)
            options += ["--perms", "0755", "--dir", folder]
    return options


@dataclass(frozen=True)
class Sandbox:
    """The Pod's security context as bwrap options, for any command."""

    uid: int
    gid: int
    as_root: bool  # bwrap runs as root and setpriv drops to uid:gid; else an unprivileged user namespace
    mounts: tuple[str, ...]  # bwrap's filesystem options, in order
    env: Mapping[str, str]

    def argv(self, command: Sequence[str], *, info_fd: int | None = None) -> list[str]:
        bwrap = shutil.which("bwrap")
        assert bwrap is not None
        isolation = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--as-pid-1",
                     "--die-with-parent", "--new-session"]  # fmt: skip
        if not self.as_root:
            isolation += ["--unshare-user", "--uid", str(self.uid), "--gid", str(self.gid), "--cap-drop", "ALL"]
        setenv = [arg for key, value in sorted(self.env.items()) for arg in ("--setenv", key, value)]
        info = ["--info-fd", str(info_fd)] if info_fd is not None else []
        drop = []
        if self.as_root:  # bwrap keeps root's capabilities for setpriv, which drops them and the UID before exec
            drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--inh-caps=-all",
                    "--bounding-set=-all", "--no-new-privs", "--"]  # fmt: skip
        return [bwrap, *isolation, *self.mounts, "--chdir", str(ROOT), "--clearenv", *setenv, *info, "--", *drop,
                *command]  # fmt: skip


def sandbox_for(deployment: Manifest, plan: LocalPlan) -> Sandbox:
    """The rendered Deployment's security context and volumes as a sandbox, its server env as the Pod has it."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False
    uid, gid = int(context["runAsUser"]), int(context["runAsGroup"])
    fs_group = pod.get("securityContext", {}).get("fsGroup")
    as_root = os.geteuid() == 0

    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    # The sandbox root: this machine's, read-only; a new /proc and a read-only /dev with only the usual devices.
    mounts = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    bound: list[str] = []
    made: set[str] = set()
    places: dict[str, str] = {}  # the Pod's mount path -> where the sandbox has it
    for mount in container["volumeMounts"]:
        volume, path = volumes[mount["name"]], mount["mountPath"]
        if "emptyDir" in volume:  # writable: a tmpfs of the volume's size limit, at its real place (/var/run -> /run)
            size = volume["emptyDir"].get("sizeLimit")
            mounts += [*(["--size", str(size_bytes(size))] if size else []), "--perms", "0777",
                       "--tmpfs", os.path.realpath(path)]  # fmt: skip
            places[path] = path
            continue
        assert mount.get("readOnly") is True, mount
        local = plan.path_of(path)  # the files the plan laid out, with the volume's modes and fsGroup
        mode = (volume.get("secret") or volume.get("configMap") or {}).get("defaultMode", 0o644)
        for file in local.rglob("*"):
            if file.is_file():
                file.chmod(mode)
                if as_root and fs_group is not None:
                    os.chown(file, -1, int(fs_group))
        places[path] = VOLUMES_AT + path
        bound += [*folders_to(places[path], "/tmp", made), "--ro-bind", str(local), places[path]]
    # The code and the Python may live under a folder the tmpfs now covers (a clone in /tmp, as on some CI
    # machines): shown again there, read-only, as an image has them under its read-only root.
    covered = [os.path.realpath(path) for path, where in places.items() if where == path]
    shown: list[str] = []
    for path in sorted({str(ROOT), str(Path(sys.prefix).resolve()), str(Path(sys.base_prefix).resolve())}, key=len):
        if any(path == done or path.startswith(done + "/") for done in shown):
            continue
        for point in covered:
            if path.startswith(point.rstrip("/") + "/"):
                bound += [*folders_to(path, point, made), "--ro-bind", path, path]
                shown.append(path)
    mounts += bound  # after the tmpfs, which holds their mount points

    if as_root:  # what uid:gid cannot reach on this machine (a Python under /root) is shown alone, read-only
        needed = [Path(sys.base_prefix).resolve(), Path(sys.prefix), ROOT]
        closed: dict[Path, list[Path]] = {}
        for path in needed:
            folder = first_closed_folder(path, uid, gid)
            if folder is not None:
                assert folder != Path("/"), f"{uid}:{gid} cannot enter /"
                closed.setdefault(folder, []).append(path)
        for folder, paths in closed.items():
            mounts += ["--tmpfs", str(folder)]
            for path in paths:
                mounts += [*folders_to(str(path), str(folder), made), "--ro-bind", str(path), str(path)]
            mounts += ["--remount-ro", str(folder)]

    def in_sandbox(value: str) -> str:
        root = str(plan.root).rstrip("/")
        if value != root and not value.startswith(root + "/"):
            return value
        pod_path = value[len(root) :]
        for path in sorted(places, key=len, reverse=True):
            if pod_path == path or pod_path.startswith(path.rstrip("/") + "/"):
                return places[path] + pod_path[len(path) :]
        raise AssertionError(f"{value} is under no volume of the Pod")

    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        home = "/"  # what the kubelet sets for a UID the image's passwd lacks
    env = {key: in_sandbox(value) for key, value in plan.env.items()}
    # The image's own ENV (Dockerfile), with this venv as its /opt/erlmcp and this checkout as its /srv/erlmcp.
    env |= {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": home}  # fmt: skip
    return Sandbox(uid, gid, as_root, tuple(mounts), env)


def sandbox_works(sandbox: Sandbox) -> str | None:
    """Why bwrap cannot build this sandbox here, or None when it can."""
    tried = subprocess.run(sandbox.argv(["true"]), capture_output=True, text=True, timeout=30, check=False)
    if tried.returncode == 0:
        return None
    why = f"bwrap cannot build the sandbox (exit {tried.returncode}): {tried.stderr.strip()}"
    if sandbox.as_root:
        return (f"{why} (run as root, bwrap makes its mount and PID namespaces itself: that needs CAP_SYS_ADMIN and "
                "a seccomp policy that allows mount and unshare, which an unprivileged container lacks)")  # fmt: skip
    knobs = [
        "kernel/unprivileged_userns_clone",
        "user/max_user_namespaces",
        "kernel/apparmor_restrict_unprivileged_userns",
    ]
    found = [f"{knob.replace('/', '.')}={Path('/proc/sys', knob).read_text().strip()}" for knob in knobs
             if Path("/proc/sys", knob).exists()]  # fmt: skip
    return (
        f"{why}; this user (UID {os.getuid()}) needs an unprivileged user namespace: {', '.join(found) or 'no knobs'}"
    )


def render_pod(tmp_path: Path) -> tuple[Manifest, LocalPlan, LocalPlan]:
    """The chart rendered with the Marketplace schema's defaults, worker tools added, on free ports; the Pod's
    files laid out (deployer.marketplace.local) for the server and for the chart's tester Pod."""
    helm = shutil.which("helm", path=os.pathsep.join([str(ROOT / ".tools" / "bin"), os.environ.get("PATH", "")]))
    if helm is None:
        pytest.fail("helm is not installed: run `make setup` (scripts/install-tools.sh)")
    catalog = yaml.safe_load((ROOT / "app/catalog/defaults/catalog.yaml").read_text())
    catalog["tools"] += WORKER_TOOLS
    port, metrics_port = free_ports(2)
    values = {"name": "sandboxed", "namespace": "apps", "__image_repo_prefix__": "gcr.io/p/erlmcp",
              "service.port": port, "service.metricsPort": metrics_port,
              "catalogYaml": yaml.safe_dump(catalog)}  # fmt: skip
    manifests = render(load_schema(ROOT / "schema.yaml"), values, chart=ROOT / "chart", helm=helm).manifests
    (deployment,) = find(manifests, "Deployment")
    plan = plan_local_run(manifests, root=tmp_path / "pod", entrypoint=(sys.executable, "-m", "app"))
    tester = plan_tester_run(manifests, plan, root=tmp_path / "tester", entrypoint=(sys.executable, "-m", "verify"))
    return deployment, plan, tester


def call_tool(plan: LocalPlan, key: str, name: str) -> str:
    """tools/call on the sandboxed server; the text it answers."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}}
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-06-18"}  # fmt: skip
    session = httpx.post(f"http://127.0.0.1:{plan.ports['http']}/mcp", headers=headers, timeout=30, json={
        "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
        "capabilities": {}, "clientInfo": {"name": "sandbox-test", "version": "1"}}})  # fmt: skip
    assert session.status_code == 200, session.text
    headers["Mcp-Session-Id"] = session.headers["Mcp-Session-Id"]
    httpx.post(f"http://127.0.0.1:{plan.ports['http']}/mcp", headers=headers, timeout=30,
               json={"jsonrpc": "2.0", "method": "notifications/initialized"})  # fmt: skip
    answer = httpx.post(f"http://127.0.0.1:{plan.ports['http']}/mcp", headers=headers, timeout=60,
                        content=orjson.dumps(body))  # fmt: skip
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()["result"]
    assert result["isError"] is False, result
    return str(result["content"][0]["text"])


def test_the_server_runs_verified_in_the_pods_security_context_and_stops_cleanly(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap is not installed: run scripts/install-bubblewrap.sh (make test does)")
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is not installed")
    deployment, plan, tester = render_pod(tmp_path)
    sandbox = sandbox_for(deployment, plan)
    why_not = sandbox_works(sandbox)
    if why_not is not None:
        pytest.skip(why_not)

    # The probe: the same sandbox, python -c instead of the server.
    secrets = sandbox.env["ERLMCP_API_KEY_FILE"].rsplit("/", 1)[0]
    home = [sandbox.env["HOME"]] if Path(sandbox.env["HOME"]).is_dir() else []
    read_only = ["/", "/etc", "/usr", "/var/tmp", "/dev", str(ROOT), str(ROOT / "app"), sys.prefix,
                 str(Path(sys.base_prefix).resolve()), *home, secrets]  # fmt: skip
    writable = ["/tmp", "/var/run", sandbox.env["TMPDIR"]]
    probed = subprocess.run(sandbox.argv([sys.executable, "-c", PROBE, orjson.dumps(read_only + writable).decode()]),
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert probed.returncode == 0, probed.stderr
    probe = orjson.loads(probed.stdout)
    print("sandbox:", shlex.join(sandbox.argv(plan.argv)))
    print("probe:", probed.stdout)
    writes = probe["writes"]
    assert all(writes[folder] == "EROFS" for folder in read_only), writes  # read-only, not merely not permitted
    assert all(writes[folder] == "written" for folder in writable), writes
    assert probe["id"] == ["1000", "1000", "1000"]
    status = probe["status"]
    assert status["Uid"] == ["1000"] * 4, status  # real, effective, saved and filesystem
    assert status["Gid"] == ["1000"] * 4, status
    assert status["Groups"] in ([], ["1000"]), status
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[capabilities] == ["0000000000000000"], status
    assert status["NoNewPrivs"] == ["1"]
    assert probe["pid"] == 1  # its own PID namespace, the command as PID 1 (as the image's exec-form entrypoint)
    # Writable filesystems: the two emptyDir tmpfs; besides, only /proc, the new /dev/pts and the device nodes.
    writable_filesystems = {point for point, kind in probe["writable"] if kind not in {"proc", "devpts", "devtmpfs"}}
    assert writable_filesystems == {"/tmp", os.path.realpath("/var/run")}, probe["writable"]

    # The server: the Deployment's command and env, the chart's tester against it.
    log = tmp_path / "server.log"
    info_read, info_write = os.pipe()
    with log.open("wb") as out:
        server = subprocess.Popen(sandbox.argv(plan.argv, info_fd=info_write), stdout=out, stderr=subprocess.STDOUT,
                                  pass_fds=(info_write,))  # fmt: skip
    os.close(info_write)
    try:
        with os.fdopen(info_read, "rb") as info:
            pid = int(orjson.loads(info.read())["child-pid"])  # the server: PID 1 in the sandbox
        try:
            wait_ready(plan.readiness_url(), server, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{log.read_text()}") from None
        verified = subprocess.run(tester.argv, env={**os.environ, **tester.env}, capture_output=True, text=True,
                                  timeout=180, check=False)  # fmt: skip
        print(verified.stdout)
        assert verified.returncode == 0, verified.stdout + verified.stderr + log.read_text()
        assert " 0 failed" in verified.stdout

        key = Path(plan.env["ERLMCP_API_KEY_FILE"]).read_text().strip()
        assert call_tool(plan, key, "worker_uid") == "1000"
        assert int(call_tool(plan, key, "worker_pid")) > 1  # a worker process of the sandbox's PID namespace

        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", b"app"]
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        code = server.wait(timeout=plan.grace_seconds)
        stopped_in = time.monotonic() - started
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    assert code == 0, text
    assert float(plan.env["ERLMCP_DRAIN_SECONDS"]) <= stopped_in < plan.grace_seconds, text
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line.get("message") == "stopping" for line in lines), text
    for sign in ("Read-only file system", "Permission denied", "EROFS", "EACCES"):
        assert sign not in text, text  # the server tried to write (or read) outside what the Pod gives it
