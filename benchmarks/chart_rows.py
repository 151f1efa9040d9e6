"""The erlmcp rows as the chart ships it: the chart rendered with the repository's pinned Helm the way the deployer
renders it, its server Pod laid out locally by ``deployer.marketplace.local`` (mounted Secrets and files, loopback
binds), and its container's environment given to the server whole, but for the few settings a benchmark must change.

Every such change is an :class:`Override`, listed in bench.json, so a reader sees exactly what differs from the
chart: the rate limits are lifted (they are policy, not cost), the session caps are raised (the bench opens its
sessions as one client), the drain after SIGTERM is skipped (no load balancer moves traffic away; the bench stops
a server only after measuring it) and the ports are free ones.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import Wire
from benchmarks.servers_run import ROOT, ServerSpec
from deployer.marketplace.expand import IMAGE_REPO_PREFIX, PUBLIC_IMAGE_REPO_PREFIX
from deployer.marketplace.helm import find_helm
from deployer.marketplace.local import LocalDeployment, default_entrypoint, plan_local_deployment
from deployer.marketplace.render import render
from deployer.marketplace.schema import load_schema

__all__ = ["API_KEY", "OVERRIDES", "Override", "chart_rows", "chart_spec", "plan_chart"]

API_KEY = "bench-key-0123456789abcdefghijklmn"  # the --set auth.apiKey the bench renders with, and sends
IMAGE_PREFIX = PUBLIC_IMAGE_REPO_PREFIX  # what `make demo` renders for; the image is not pulled


@dataclass(frozen=True)
class Override:
    """One environment variable the bench sets over the chart's, and why."""

    name: str
    value: str
    why: str


OVERRIDES: tuple[Override, ...] = (
    Override("ERLMCP_RATE_LIMIT_PER_SECOND", "0", "rate limits are policy, not cost: lifted (0: no limit)"),
    Override("ERLMCP_INITIALIZE_PER_MINUTE", "10000000", "sessions mode opens 10k sessions a wave from one client"),
    Override("ERLMCP_MAX_SESSIONS", "100000", "sessions mode holds two waves of 10k sessions"),
    Override("ERLMCP_MAX_SESSIONS_PER_PRINCIPAL", "0", "the bench opens every session with one key (0: no quota)"),
    Override("ERLMCP_DRAIN_SECONDS", "0", "no load balancer to drain from: the bench stops each server at once"),
    Override("ERLMCP_PORT", "{port}", "a free loopback port (the Pod has its own network)"),
    Override("ERLMCP_METRICS_PORT", "{metrics_port}", "a free loopback port (the Pod has its own network)"),
)


def helm() -> str:
    """The pinned Helm: .tools/bin/helm (what `make setup` installs), else helm on PATH."""
    return find_helm(None)


def plan_chart(values: Mapping[str, object], root: Path) -> LocalDeployment:
    """Render the chart with ``values`` (over a release ``bench``, the known API key and the demo's image prefix)
    and lay out its installation under ``root``, as ``python -m deployer demo`` does."""
    schema = load_schema(ROOT / "schema.yaml")
    given = {IMAGE_REPO_PREFIX: IMAGE_PREFIX, "name": "bench", "namespace": "default", "auth.apiKey": API_KEY}
    rendered = render(schema, {**given, **values}, chart=ROOT / "chart", helm=helm())
    return plan_local_deployment(rendered.manifests, root=root, entrypoint=default_entrypoint())


def chart_spec(
    name: str,
    root: Path,
    *,
    values: Mapping[str, object] | None = None,
    extra: tuple[Override, ...] = (),
    wire: Wire = "session",
    access_log: bool = True,
    sessions: bool = True,
) -> ServerSpec:
    """One row: the chart rendered with ``values``, its server's env with :data:`OVERRIDES` (and ``extra``) over it.

    Raises:
        RuntimeError: the chart runs more than one server replica, or its key file lacks the bench's key.
    """
    values = dict(values or {})
    deployment = plan_chart(values, root)
    if len(deployment.servers) != 1:
        raise RuntimeError(f"{name}: the bench runs one server replica, the chart asks for {len(deployment.servers)}")
    plan = deployment.servers[0]
    key_file = Path(plan.env.get("ERLMCP_API_KEY_FILE", ""))
    if not key_file.is_file() or API_KEY not in key_file.read_text().split():
        raise RuntimeError(f"{name}: the chart's API key file {key_file} does not hold the bench's key")
    overrides = {o.name: {"chart": plan.env.get(o.name), "bench": o.value, "why": o.why} for o in (*OVERRIDES, *extra)}
    env = {**plan.env, **{variable: o["bench"] or "" for variable, o in overrides.items()}}
    return ServerSpec(
        name,
        tuple(plan.argv),
        env=env,
        cwd=plan.root,
        inherit_env=False,
        wire=wire,
        api_key=API_KEY,
        redis=deployment.redis,
        log=True,
        access_log=access_log,
        overrides=overrides,
        chart_values={**values, "auth.apiKey": "(the bench's key)"},
        sessions=sessions,
    )


def chart_rows(root: Path, *, redis: bool = True) -> list[ServerSpec]:
    """The rows of erlmcp as the chart ships it: ``erlmcp-chart``, ``erlmcp-chart-noaccess``,
    ``erlmcp-chart-stateless`` (``sessions.store=stateless``, the 2026-07-28 wire) and, when ``redis`` and
    redis-server is installed, ``erlmcp-chart-redis`` (``sessions.store=redis``, one replica)."""
    rows = [
        chart_spec("erlmcp-chart", root / "chart"),
        chart_spec("erlmcp-chart-noaccess", root / "noaccess", values={"accessLog": False}, access_log=False),
        chart_spec(
            "erlmcp-chart-stateless",
            root / "stateless",
            values={"sessions.store": "stateless"},
            wire="stateless",
            sessions=False,
        ),  # fmt: skip
    ]
    if redis and shutil.which("redis-server"):
        rows.append(chart_spec("erlmcp-chart-redis", root / "redis", values={"sessions.store": "redis"}))
    return rows


def stripped_spec() -> ServerSpec:
    """``erlmcp-stripped``: no auth, WARNING logs (no access line): what `make bench` measured before issue 25."""
    flags = "--no-auth --port {port} --metrics-port {metrics_port} --log-level WARNING --log-format json"
    return ServerSpec(
        "erlmcp-stripped",
        (sys.executable, "-m", "app", *flags.split()),
        env={
            "ERLMCP_INITIALIZE_PER_MINUTE": "10000000",
            "ERLMCP_MAX_SESSIONS": "100000",
            "ERLMCP_MAX_SESSIONS_PER_PRINCIPAL": "0",  # the bench opens its sessions as one client
        },
    )
