"""The four images built with a real Docker engine from a local base: the server runs as the chart's security
context demands (read-only root, UID 1000, no capabilities, writable /tmp and /var/run only) and the tester image
verifies it; the deployer image carries the filled-in schema and the chart; the redis image runs the chart's
redis.conf the way the chart's Deployment runs it, behind its password."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from app import __version__
from deployer.marketplace.local import free_ports
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the first build makes the base image (about 1 min)

PREFIX = "erlmcp-local/erlmcp"
KEY = "image-key-0123456789abcdef"
REDIS = f"{PREFIX}/redis:{__version__}"
IMAGES = (f"{PREFIX}:{__version__}", f"{PREFIX}/tester:{__version__}", f"{PREFIX}/deployer:{__version__}", REDIS)
LICENSES = {REDIS: "BSD-3-Clause"}  # Redis 7.0's; the others are erlmcp's own code
REDIS_PASSWORD = "redis-password-0123456789abcdef"
BUILD_REPORT: list[str] = []  # what scripts/build-images.sh printed


@pytest.fixture(scope="module")
def docker() -> Iterator[dict[str, str]]:
    """The images built (scripts/build-images.sh), and the environment that reaches the engine."""
    built = subprocess.run(["bash", "scripts/build-images.sh", PREFIX, __version__], cwd=ROOT, capture_output=True,
                           text=True, timeout=1800)  # fmt: skip
    if built.returncode == 3:
        pytest.skip(f"no container engine can run on this machine: {built.stderr.strip()}")
    assert built.returncode == 0, built.stdout + built.stderr
    started = subprocess.run(["bash", "scripts/container-engine.sh", "start"], cwd=ROOT, capture_output=True,
                             text=True, check=True)  # fmt: skip
    env = {**os.environ, started.stdout.strip().split("=", 1)[0]: started.stdout.strip().split("=", 1)[1]}
    print(built.stdout)  # the image sizes, in the test log
    BUILD_REPORT.append(built.stdout)
    yield env
    subprocess.run(["bash", "scripts/container-engine.sh", "stop"], cwd=ROOT, capture_output=True, check=False)


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=300, check=check)


def inspect(env: dict[str, str], image: str) -> dict[str, Any]:
    config: dict[str, Any] = orjson.loads(run(env, "image", "inspect", image).stdout)[0]["Config"]
    return config


def test_the_build_reports_each_images_size_unpacked_and_as_pushed(docker: dict[str, str]) -> None:
    [report] = BUILD_REPORT
    for image in IMAGES:
        line = next(line for line in report.splitlines() if line.split()[:1] == [image])
        found = re.search(r"(\d+) MB \((\d+) MB compressed, as pushed\)", line)
        assert found, line
        unpacked, packed = int(found[1]), int(found[2])
        size = orjson.loads(run(docker, "image", "inspect", image).stdout)[0]["Size"]
        assert unpacked == round(size / 1e6), line
        assert 0 < packed < unpacked, line


def test_each_image_runs_as_uid_1000_with_an_exec_form_entrypoint_and_oci_labels(docker: dict[str, str]) -> None:
    for image in IMAGES:
        config = inspect(docker, image)
        assert config["User"] == "1000:1000", image
        assert isinstance(config["Entrypoint"], list), image
        assert config["Labels"]["org.opencontainers.image.version"] == __version__, image
        assert config["Labels"]["org.opencontainers.image.licenses"] == LICENSES.get(image, "Apache-2.0"), image


def test_the_hardened_server_passes_the_tester_images_verify_run_and_stops_on_sigterm(
    docker: dict[str, str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    keys.chmod(0o644)
    port, metrics_port = free_ports(2)
    name = f"erlmcp-smoke-{port}"
    run(docker, "run", "--detach", "--name", name, "--read-only", "--user", "1000:1000", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--tmpfs", "/tmp", "--tmpfs", "/var/run", "--network", "host",
        "--env", "ERLMCP_HOST=127.0.0.1", "--env", f"ERLMCP_PORT={port}",
        "--env", f"ERLMCP_METRICS_PORT={metrics_port}", "--volume", f"{keys}:/etc/erlmcp/keys:ro",
        f"{PREFIX}:{__version__}", "--api-key-file", "/etc/erlmcp/keys")  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, run(docker, "logs", name, check=False).stderr
            time.sleep(0.2)
        verified = run(docker, "run", "--rm", "--read-only", "--user", "1000:1000", "--cap-drop", "ALL",
                       "--network", "host", "--volume", f"{keys}:/etc/erlmcp/keys:ro", f"{PREFIX}/tester:{__version__}",
                       "--url", f"http://127.0.0.1:{port}", "--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics",
                       "--api-key-file", "/etc/erlmcp/keys", check=False)  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "0 failed" in verified.stdout
        # A process-isolated tool call needs nothing writable but /tmp: the worker starts under a read-only root.
        worker = run(docker, "exec", name, "python", "-c",
                     "import asyncio; from app.runtime.pool import WorkerPool\n"
                     "async def main():\n    pool = WorkerPool(size=1, memory_limit_mb=256)\n"
                     "    print(await pool.call('os:getpid', {}) > 1); await pool.aclose()\n"
                     "asyncio.run(main())")  # fmt: skip
        assert "True" in worker.stdout.splitlines(), worker.stdout + worker.stderr
        started = time.monotonic()
        run(docker, "stop", "--time", "20", name)
        stopped_in = time.monotonic() - started
        state = orjson.loads(run(docker, "inspect", name).stdout)[0]["State"]
    finally:
        logs = run(docker, "logs", name, check=False)
        run(docker, "rm", "--force", name, check=False)
    assert state["ExitCode"] == 0, logs.stdout + logs.stderr  # SIGTERM handled, not killed after the grace period
    assert stopped_in < 20
    lines = [orjson.loads(line) for line in logs.stderr.splitlines() if line.startswith("{")]
    assert any(line.get("message") == "stopping" for line in lines)


def test_the_deployer_image_carries_the_chart_and_the_schema_with_its_images(docker: dict[str, str]) -> None:
    image = f"{PREFIX}/deployer:{__version__}"
    cat = ("run", "--rm", "--network", "none", "--entrypoint", "cat", image)
    schema = run(docker, *cat, "/data/schema.yaml").stdout
    assert f'publishedVersion: "{__version__}"' in schema
    tests = run(docker, *cat, "/data-test/schema.yaml").stdout
    assert f"default: {PREFIX}/tester" in tests  # the tester image this very build made
    assert f"default: {__version__}" in tests
    assert "$REGISTRY" not in tests
    listed = run(docker, "run", "--rm", "--network", "none", "--entrypoint", "tar", image, "-tzf",
                 "/data/chart/erlmcp.tar.gz").stdout  # fmt: skip
    assert "chart/Chart.yaml" in listed
    helped = run(
        docker, "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-m", "deployer", "--help"
    )
    assert "marketplace" in helped.stdout
    helm = run(docker, "run", "--rm", "--network", "none", "--entrypoint", "helm", image, "version", "--short")
    assert helm.stdout.startswith("v3.18.0")


def test_the_redis_image_is_the_shared_slim_base_and_one_small_layer(docker: dict[str, str]) -> None:
    [report] = BUILD_REPORT
    base = next(line.split()[2] for line in report.splitlines() if line.startswith("base image "))
    [base_image] = orjson.loads(run(docker, "image", "inspect", base).stdout)
    [redis] = orjson.loads(run(docker, "image", "inspect", REDIS).stdout)
    layers = redis["RootFS"]["Layers"]
    assert layers[:-1] == base_image["RootFS"]["Layers"]  # a node that runs the server already has all but one
    assert redis["Size"] - base_image["Size"] < 12e6, redis["Size"] - base_image["Size"]
    config = redis["Config"]
    assert config["Entrypoint"] == ["redis-server"]  # the chart passes only its config file as args
    assert not config["Cmd"]
    assert "6379/tcp" in config["ExposedPorts"]
    assert config["WorkingDir"] == "/data"


def chart_redis(helm: str) -> tuple[str, dict[str, Any]]:
    """The chart's redis.conf (Secret r1-redis) and Redis container, rendered by real Helm for sessions.store=redis."""
    rendered = subprocess.run([helm, "template", "r1", str(ROOT / "chart"), "--set", "sessions.store=redis",
                               "--set", f"sessions.redis.password={REDIS_PASSWORD}"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    documents = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    named = {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}
    config = base64.b64decode(named["Secret", "r1-redis"]["data"]["redis.conf"]).decode()
    [container] = named["Deployment", "r1-redis"]["spec"]["template"]["spec"]["containers"]
    return config, container


def test_the_redis_image_runs_the_charts_config_behind_its_password_and_answers_the_readiness_probe(
    docker: dict[str, str], helm: str, tmp_path: Path
) -> None:
    config, container = chart_redis(helm)
    assert f"requirepass {REDIS_PASSWORD}" in config
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert f"\ndir {mounts['data']}\n" in config
    probe = container["readinessProbe"]["exec"]["command"]
    assert "env" not in container  # the password is in no environment variable: the probe reads the mounted file
    folder = tmp_path / "redis"
    folder.mkdir()
    for file, text in (("redis.conf", config), ("password", REDIS_PASSWORD)):
        (folder / file).write_text(text)
        (folder / file).chmod(0o444)  # the chart's 0440 with fsGroup 1000: readable by UID 1000
    folder.chmod(0o755)
    name = f"erlmcp-redis-smoke-{secrets.token_hex(4)}"
    # As the chart's Deployment runs it: its args and config, a read-only root, UID/GID 1000, no capabilities, a
    # fresh volume on /data (the emptyDir) and port 6379 in a network namespace of its own (the Pod's); the probe
    # and the clients below reach it from inside, as the kubelet's exec probe does.
    run(docker, "run", "--detach", "--name", name, "--read-only", "--user", "1000:1000", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--network", "none", "--volume", f"{folder}:{mounts['config']}:ro",
        "--volume", mounts["data"], REDIS, *container["args"])  # fmt: skip

    def cli(*args: str, password: str | None = REDIS_PASSWORD) -> subprocess.CompletedProcess[str]:
        auth = ["--env", f"REDISCLI_AUTH={password}"] if password is not None else []
        return run(docker, "exec", *auth, name, *args, check=False)

    try:
        deadline = time.monotonic() + 30
        while (answered := cli(*probe, password=None)).returncode != 0:  # the probe reads the file alone
            assert time.monotonic() < deadline, answered.stdout + answered.stderr
            time.sleep(0.2)
        assert answered.stdout.strip() == "PONG"
        refused = cli("redis-cli", "-e", "ping", password=None)
        assert refused.returncode != 0  # the probe's PING fails without the password
        assert "NOAUTH" in refused.stdout + refused.stderr
        assert "NOAUTH" in cli("redis-cli", "set", "session:1", "stolen", password=None).stdout
        wrong = cli("redis-cli", "-e", "ping", password="wrong")
        assert wrong.returncode != 0
        assert "WRONGPASS" in wrong.stderr
        assert cli("redis-cli", "-e", "set", "session:1", "value", "EX", "600").stdout.strip() == "OK"
        assert cli("redis-cli", "-e", "get", "session:1").stdout.strip() == "value"
        assert "redis_version:7." in cli("redis-cli", "-e", "info", "server").stdout
        policy = cli("redis-cli", "-e", "config", "get", "maxmemory-policy").stdout.split()
        assert policy == re.findall(r"^maxmemory-policy \S+$", config, re.MULTILINE)[0].split()  # the chart's config
        status = run(docker, "exec", name, "cat", "/proc/1/status", "/proc/1/comm").stdout
        assert re.search(r"^Uid:\s+1000\s+1000\s+1000\s+1000$", status, re.MULTILINE), status
        assert re.search(r"^Gid:\s+1000\s+1000\s+1000\s+1000$", status, re.MULTILINE), status
        assert status.splitlines()[-1] == "redis-server"  # PID 1 (exec-form entrypoint), no shell in between
        # The data volume (the config's dir; owned by UID 1000 in the image, a fresh volume here) takes a snapshot.
        assert cli("redis-cli", "-e", "save").stdout.strip() == "OK"
        assert "dump.rdb" in run(docker, "exec", name, "ls", mounts["data"]).stdout.split()
        started = time.monotonic()
        run(docker, "stop", "--time", "20", name)
        stopped_in = time.monotonic() - started
        state = orjson.loads(run(docker, "inspect", name).stdout)[0]["State"]
    finally:
        logs = run(docker, "logs", name, check=False)
        run(docker, "rm", "--force", "--volumes", name, check=False)
    assert state["ExitCode"] == 0, logs.stdout + logs.stderr  # SIGTERM: a clean shutdown, not a kill
    assert stopped_in < 20
    assert "Ready to accept connections" in logs.stdout + logs.stderr  # logfile "": its log on stdout
