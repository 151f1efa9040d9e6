"""``python -m deployer``: render the chart from Marketplace values, run it locally, or install it."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from deployer.errors import ClusterError, DeployerError, SchemaError, ValuesError
from deployer.marketplace.application import Prepared, prepare
from deployer.marketplace.cluster import Cluster
from deployer.marketplace.contract import DataDir, extracted_chart, read_values
from deployer.marketplace.expand import IMAGE_REPO_PREFIX, PUBLIC_IMAGE_REPO_PREFIX
from deployer.marketplace.helm import KubeTarget, find_helm
from deployer.marketplace.install import (
    application_status,
    failed_on_error,
    install,
    run_testers,
    uninstall,
    wait_until_ready,
)
from deployer.marketplace.local import LocalRun, Stopped, default_entrypoint, plan_local_deployment, plan_tester_run
from deployer.marketplace.plan import plan
from deployer.marketplace.render import Rendered, render
from deployer.marketplace.schema import Schema, load_schema

__all__ = ["build_parser", "main"]


def _progress(message: str) -> None:
    print(f"deployer: {message}", file=sys.stderr, flush=True)


def _settings(pairs: Sequence[str], schema: Schema) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs: the text as is for a string property, else read as YAML (``true``, ``3``)."""
    found: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ValuesError(f"--set takes NAME=VALUE, not {pair!r}")
        prop = schema.properties.get(name)
        if prop is not None and prop.json_type == "string":
            found[name] = raw
            continue
        try:
            found[name] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ValuesError(f"--set {name}: the value is not valid YAML: {exc}") from exc
    return found


def _values(args: argparse.Namespace, schema: Schema) -> dict[str, Any]:
    values = read_values(args.values) if args.values is not None else {}
    values.update(_settings(args.set, schema))
    name_key = schema.property_of_type("NAME").name
    namespace_key = schema.property_of_type("NAMESPACE").name
    values.setdefault(name_key, args.name)
    values.setdefault(namespace_key, args.namespace)
    if args.image_repo_prefix:
        values[IMAGE_REPO_PREFIX] = args.image_repo_prefix
    values.setdefault(IMAGE_REPO_PREFIX, PUBLIC_IMAGE_REPO_PREFIX)  # (a values file may name its own)
    return values


def _render(args: argparse.Namespace) -> Rendered:
    schema = load_schema(args.schema)
    return render(schema, _values(args, schema), chart=args.chart, helm=find_helm(args.helm))


def _connect(args: argparse.Namespace) -> Cluster:
    return Cluster.connect(kubeconfig=args.kubeconfig, context=args.context)


def _target(args: argparse.Namespace) -> KubeTarget:
    """The cluster of :func:`_connect`, for Helm (the chart's ``lookup`` reads it)."""
    return KubeTarget(kubeconfig=args.kubeconfig, context=args.context)


def _emit(data: Any, output: str) -> None:
    """Data on stdout, in the format asked for."""
    if output == "json":
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif output == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        rows = data.get("components") or data.get("objects") or []
        header = f"{data.get('name')} in {data.get('namespace')}: " + ", ".join(
            f"{key} {data[key]}" for key in ("version", "assemblyPhase", "ready") if key in data
        )
        print(header)
        if rows:
            columns = list(rows[0])
            widths = [max(len(str(c)), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
            print("  ".join(str(c).upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
            for row in rows:
                print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _cmd_render(args: argparse.Namespace) -> int:
    rendered = _render(args)
    if args.to:
        try:
            args.to.write_text(rendered.text, encoding="utf-8")
        except OSError as exc:
            raise DeployerError(f"cannot write {args.to}: {exc.strerror or exc}") from exc
    else:
        sys.stdout.write(rendered.text)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    rendered = _render(args)
    root = Path(tempfile.mkdtemp(prefix="erlmcp-demo-"))
    try:
        deployment = plan_local_deployment(rendered.manifests, root=root, entrypoint=default_entrypoint())
        print(
            f"== rendered {len(rendered.manifests)} objects for release {rendered.release!r}; "
            f"running {deployment.summary()} locally"
        )
        print(deployment.describe())
        with LocalRun(deployment, root) as run:
            run.start(ready_timeout=args.ready_timeout)
            # The chart's own tester Pod (what helm test and mpdev verify run), with its args and Secret.
            tester = plan_tester_run(
                rendered.manifests, deployment, root=root / "tester", entrypoint=(sys.executable, "-m", "verify")
            )
            command = [*tester.argv, *(["--junit", str(args.junit)] if args.junit else [])]
            print("== the chart's tester Pod, run locally:")
            print(tester.describe(), flush=True)
            verified = subprocess.run(command, check=False, env={**os.environ, **tester.env}).returncode
        stopped = run.stop()
        print(_demo_stopped(stopped, root if args.keep else None))
        if verified != 0 or not stopped.clean:
            codes = ", ".join(map(str, stopped.servers)) + ("" if stopped.redis is None else f"; Redis {stopped.redis}")
            print(f"== demo FAILED (verify exit {verified}, server exit {codes}); server log tail:\n{run.log_tails()}")
            return 1
        print("== demo passed")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _demo_stopped(stopped: Stopped, kept: Path | None) -> str:
    """What the demo says once everything stopped: exit codes, the connections each replica took, and where the
    logs are when they are kept."""
    if len(stopped.servers) == 1 and stopped.redis is None:
        return f"== server stopped (exit {stopped.servers[0]})" + (f"; its log: {kept / 'server.log'}" if kept else "")
    lines = [
        f"== proxy: Service {plan.service} port {plan.port}: "
        + ", ".join(f"replica {i} took {n} connections" for i, n in enumerate(served, 1))
        for plan, served in stopped.served
    ]
    lines.append(
        f"== servers stopped (exit {', '.join(map(str, stopped.servers))})"
        + ("" if stopped.redis is None else f"; Redis stopped (exit {stopped.redis})")
        + (f"; logs in {kept}" if kept else "")
    )
    return "\n".join(lines)


def _objects(prepared: Prepared) -> list[dict[str, str]]:
    return [
        {"kind": m["kind"], "name": m["metadata"]["name"], "apiVersion": m["apiVersion"]}
        for m in [prepared.application, *prepared.components]
    ]


def _cmd_install(args: argparse.Namespace) -> int:
    schema = load_schema(args.schema)
    if args.dry_run:  # render and check as the install would, touch no cluster
        rendered = _render(args)
        prepared = prepare(rendered.manifests, release=rendered.release, schema=schema)
        _emit(
            {"name": rendered.release, "namespace": rendered.namespace, "dryRun": True, "objects": _objects(prepared)},
            args.output,
        )
        return 0
    cluster = _connect(args)
    try:
        rendered, prepared = plan(
            cluster, schema, _values(args, schema), target=_target(args), chart=args.chart, helm=find_helm(args.helm)
        )
        with failed_on_error(cluster, rendered.release, rendered.namespace, log=_progress):
            install(cluster, prepared, namespace=rendered.namespace, log=_progress)
            if args.wait:
                wait_until_ready(
                    cluster,
                    prepared,
                    rendered.namespace,
                    timeout=args.timeout,
                    stable=args.stable_seconds,
                    log=_progress,
                )
        _emit(application_status(cluster, rendered.release, rendered.namespace), args.output)
    finally:
        cluster.close()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    try:
        status = application_status(cluster, args.name, args.namespace)
    finally:
        cluster.close()
    _emit(status, args.output)
    return 0 if status["ready"] and status["assemblyPhase"] == "Success" else 1


def _cmd_verify(args: argparse.Namespace) -> int:
    schema = load_schema(args.schema)
    cluster = _connect(args)
    try:
        values = _values(args, schema)
        name, namespace = (
            str(values[schema.property_of_type("NAME").name]),
            str(values[schema.property_of_type("NAMESPACE").name]),
        )
        live = cluster.get("app.k8s.io/v1beta1", "Application", name, namespace)
        if live is None:
            raise ClusterError(f"there is no Application {name} in namespace {namespace}; install it first", status=404)
        _, prepared = plan(
            cluster, schema, values, target=_target(args), chart=args.chart, helm=find_helm(args.helm), test=True
        )
        outcomes = run_testers(
            cluster, prepared, live["metadata"]["uid"], namespace, timeout=args.timeout, log=_progress
        )
    finally:
        cluster.close()
    _emit(
        {"name": name, "namespace": namespace, "objects": [{"tester": o.name, "phase": o.phase} for o in outcomes]},
        args.output,
    )
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    try:
        removed = uninstall(cluster, args.name, args.namespace, timeout=args.timeout, log=_progress)
    finally:
        cluster.close()
    if not removed:
        _progress(f"there is no Application {args.name} in namespace {args.namespace}; nothing to remove")
    return 0


def _release(schema: Schema, values: dict[str, Any]) -> tuple[str, str]:
    """NAME and NAMESPACE from the values.

    Raises:
        ValuesError: one of them has no value.
    """
    found = []
    for x_type in ("NAME", "NAMESPACE"):
        key = schema.property_of_type(x_type).name
        if not values.get(key):
            raise ValuesError(f"No value for required property: {key}")
        found.append(str(values[key]))
    return found[0], found[1]


def _stop_on_sigterm() -> None:
    """A Job that is stopped (deleted, or past its deadline) still marks the Application Failed."""

    def stop(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _cmd_marketplace(args: argparse.Namespace) -> int:
    """The deployer Job: /data in, the app applied, Success or Failed on the Application, exit 0 or not."""
    data = DataDir(args.data, args.data_test)
    # The names come first, from the schema as shipped and the raw values: every failure after this point is
    # recorded on the Application.
    values = data.values(args.values)
    name, namespace = _release(data.schema(test=False), values)
    _stop_on_sigterm()
    cluster = _connect(args)
    try:
        with failed_on_error(cluster, name, namespace, log=_progress):
            schema = data.schema(test=args.test)
            charts, overlays = data.charts(test=args.test)
            if len(charts) != 1:
                raise DeployerError(f"{data.data / 'chart'} must hold exactly one chart tarball, found {len(charts)}")
            with extracted_chart(charts[0], overlays) as chart:
                _, prepared = plan(
                    cluster,
                    schema,
                    values,
                    target=_target(args),
                    chart=chart,
                    helm=find_helm(args.helm),
                    test=args.test,
                )
            uid = install(cluster, prepared, namespace=namespace, log=_progress)
            if args.test:
                wait_until_ready(
                    cluster, prepared, namespace, timeout=args.wait_timeout, stable=args.stable_seconds, log=_progress
                )
                run_testers(cluster, prepared, uid, namespace, timeout=args.tester_timeout, log=_progress)
            _clean_deployer_account(cluster, name, namespace)
    finally:
        cluster.close()
    _progress(f"Application {name} installed" + (" and verified" if args.test else ""))
    return 0


def _clean_deployer_account(cluster: Cluster, name: str, namespace: str) -> None:
    """Delete the deployer's own ServiceAccount once it is done (its RBAC goes with it), as Google's tools do."""
    for account in cluster.list(
        "v1",
        "ServiceAccount",
        namespace,
        labels={"app.kubernetes.io/component": "deployer.marketplace.cloud.google.com", "app.kubernetes.io/name": name},
    ):
        cluster.delete("v1", "ServiceAccount", account["metadata"]["name"], namespace)
        _progress(f"deleted the deployer ServiceAccount {account['metadata']['name']}")


def _cmd_monitoring(args: argparse.Namespace) -> int:
    from deployer.gcp import monitoring  # the Google Cloud clients load for this command only

    return monitoring.command(args, log=_progress)


def _add_monitoring_arguments(sub: argparse.ArgumentParser) -> None:
    """The options of ``python -m deployer monitoring``."""
    sub.add_argument(
        "action",
        choices=("plan", "apply", "render"),
        help="plan: show what would change; apply: change it; render: print every object apply would make, "
        "offline (no credentials, no call)",
    )
    sub.add_argument("--project", required=True, help="Google Cloud project ID the objects live in")
    sub.add_argument(
        "-n",
        "--namespace",
        help="watch only the erlmcp in this Kubernetes namespace (default: every "
        "namespace); objects of different namespaces are managed separately",
    )
    sub.add_argument("--dry-run", action="store_true", help="with apply: print the plan, write nothing")
    sub.add_argument("--email", action="append", default=[], metavar="ADDR", help="an email channel; repeatable")
    sub.add_argument(
        "--pagerduty-key-file",
        type=Path,
        metavar="FILE",
        help="a PagerDuty channel with the "
        "integration (service) key in FILE; paged for CRITICAL and ERROR policies only",
    )
    sub.add_argument(
        "--slack-channel", metavar="CHANNEL", help="a Slack channel (e.g. #erlmcp-alerts); needs --slack-token-file"
    )
    sub.add_argument("--slack-token-file", type=Path, metavar="FILE", help="file holding the Slack app's token")
    sub.add_argument("--webhook-url", metavar="URL", help="a webhook (webhook_tokenauth) channel posting to URL")
    sub.add_argument(
        "--memory-limit-bytes",
        type=int,
        default=512 * 1024 * 1024,
        metavar="BYTES",
        help="the pods' memory limit; the memory policy fires at 90%% (default 512 MiB)",
    )
    sub.add_argument(
        "--max-connections",
        type=int,
        default=10_000,
        metavar="N",
        help="long-lived connections one pod is sized for; the saturation policy fires at 80%% (default 10000)",
    )
    sub.add_argument("--json", action="store_true", help="print the plan as JSON")
    sub.add_argument("--endpoint", metavar="HOST:PORT", help="advanced: the API endpoint (default Google's)")
    sub.add_argument(
        "--insecure",
        action="store_true",
        help="advanced, for testing: plaintext gRPC to "
        "--endpoint without credentials, e.g. a local server speaking the API",
    )


# platform -> (module in deployer.gcp, actions, help)
PLATFORMS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "network": ("network", ("plan", "apply", "render"), "the VPC, subnet, Cloud Router and NAT, and firewall rules"),
    "cluster": (
        "gke",
        ("plan", "apply", "render", "check"),
        "the regional GKE cluster and its node pools; check compares "
        "an existing cluster with the seed design and exits 1 when it differs",
    ),
    "secrets": (
        "secrets",
        ("plan", "apply", "render"),
        "the secrets erlmcp reads, in Secret Manager, and the Workload "
        "Identity binding that lets the app's service account read them",
    ),
    "cloudrun": (
        "cloudrun",
        ("plan", "apply", "render", "canary", "promote", "rollback"),
        "the Cloud Run service; canary "
        "deploys a tagged revision at a small share of traffic, promote or rollback ends it",
    ),
    "gce": (
        "compute",
        ("plan", "apply", "render"),
        "the Compute Engine instance template, regional managed instance group, "
        "autoscaler, health check and load balancer backend, and with compute.frontend the global external "
        "Application Load Balancer (address, managed certificate, HTTPS proxy, HTTP redirect, Cloud Armor)",
    ),
    "memorystore": (
        "memorystore",
        ("plan", "apply", "render"),
        "the Memorystore for Redis instance that holds the "
        "sessions (sessions.store: external); render prints the desired instance offline, apply "
        "--secret-out DIR writes its connection for a Kubernetes Secret or Secret Manager",
    ),
    "logging": (
        "log_router",
        ("plan", "apply", "render"),
        "the Cloud Logging router (log sinks to BigQuery and Cloud Storage with unique writer identities, the "
        "BigQuery dataset and the Cloud Storage bucket they write to, each sink's writer identity granted on its "
        "destination, the health-check and probe exclusions, the log bucket's retention)",
    ),
}


def _cmd_platform(args: argparse.Namespace) -> int:
    import importlib  # the Google Cloud clients load for this command only

    module = importlib.import_module(f"deployer.gcp.{PLATFORMS[args.command][0]}")
    code: int = module.command(args, log=_progress)
    return code


def _add_platform_arguments(sub: argparse.ArgumentParser, actions: Sequence[str]) -> None:
    """The options every ``python -m deployer <platform>`` command shares."""
    sub.add_argument(
        "action",
        choices=actions,
        help="plan: show what would change; apply: change it; render: print the desired resources offline (no "
        "credentials, no call)" + ("; " + ", ".join(actions[3:]) + ": see the description" if len(actions) > 3 else ""),
    )
    sub.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="the erlmcp Google Cloud configuration (YAML; every key defaults to the seed design, see the README)",
    )
    sub.add_argument("--project", help="Google Cloud project ID (overrides the configuration's project)")
    sub.add_argument("--region", help="region (overrides the configuration's region, default us-central1)")
    sub.add_argument("--image", help="the server image (overrides the configuration's image)")
    sub.add_argument("--dry-run", action="store_true", help="with apply (or any change): print the plan, write nothing")
    sub.add_argument("--json", action="store_true", help="print the plan or report as JSON")
    sub.add_argument("--endpoint", metavar="HOST:PORT", help="advanced: the API endpoint (default Google's)")
    sub.add_argument(
        "--insecure",
        action="store_true",
        help="advanced, for testing: no TLS and no credentials to --endpoint, e.g. a local server speaking the API",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m deployer",
        description="Install erlmcp from its Marketplace schema v2 and Helm chart, as Google's Marketplace deployer "
        "does (schema rules, defaults, generated passwords and certificates, image projections, Helm 3, "
        "ownerReferences to the Application, server-side apply, assemblyPhase), or print it, run it locally, "
        "check it and remove it. Data goes to stdout, progress to stderr. Exit codes: 0 success, 1 failure, "
        "2 bad input (nothing applied).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def release(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--name", default="erlmcp", help="release (Application) name when the values give none (default erlmcp)"
        )
        sub.add_argument("-n", "--namespace", default="default", help="namespace when the values give none")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "-f",
            "--values",
            type=Path,
            metavar="VALUES",
            help="Marketplace values file: property names (flat or nested) to values",
        )
        sub.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="one property value (YAML), e.g. --set replicaCount=2; repeatable, wins over -f",
        )
        sub.add_argument("--schema", type=Path, default=Path("schema.yaml"), help="schema file (default schema.yaml)")
        sub.add_argument("--chart", type=Path, default=Path("chart"), help="chart directory (default chart)")
        release(sub)
        sub.add_argument(
            "--image-repo-prefix",
            metavar="PREFIX",
            help=f"image repository prefix (sets {IMAGE_REPO_PREFIX}; default: a values file's, else the public "
            f"images, {PUBLIC_IMAGE_REPO_PREFIX})",
        )
        sub.add_argument(
            "--helm", help="Helm 3 binary (default: the repository's pinned .tools/bin/helm, else helm on PATH)"
        )

    def cluster(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--kubeconfig",
            type=Path,
            help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, or the in-cluster service account)",
        )
        sub.add_argument("--context", help="kubeconfig context (default: the current one)")

    def output(sub: argparse.ArgumentParser, default: str = "table") -> None:
        sub.add_argument(
            "-o",
            "--output",
            choices=("table", "json", "yaml"),
            default=default,
            help=f"format of the data on stdout (default {default})",
        )

    render_cmd = commands.add_parser(
        "render",
        help="print the rendered manifests",
        description="Print the manifests Marketplace would apply for these values.",
    )
    common(render_cmd)
    render_cmd.add_argument("--to", "--output-file", dest="to", type=Path, help="write the manifests here, not stdout")
    render_cmd.set_defaults(run=_cmd_render)

    demo_cmd = commands.add_parser(
        "demo",
        help="run the rendered server locally and verify it",
        description="Render the chart, start the server as a local process with the Pod's env, mounted "
        "ConfigMaps and Secrets, and ports, run the verify suite against it, stop it. With sessions.store=redis "
        "also the chart's Redis (redis-server with the chart's redis.conf), and each replica on ports of its own "
        "behind a round-robin proxy on the Services' ports. Touches no cluster.",
    )
    common(demo_cmd)
    demo_cmd.add_argument("--junit", type=Path, metavar="FILE", help="also write the verify report as JUnit XML")
    demo_cmd.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for /readyz")
    demo_cmd.add_argument("--keep", action="store_true", help="keep the local Pod folder and server log")
    demo_cmd.set_defaults(run=_cmd_demo)

    install_cmd = commands.add_parser(
        "install",
        help="install (or upgrade) into a cluster",
        description="Render the chart for the cluster's Kubernetes version, apply the Application (Pending), "
        "then every component owned by it with server-side apply, then mark it Success (Failed on an error). "
        "Running it again converges.",
    )
    common(install_cmd)
    cluster(install_cmd)
    output(install_cmd)
    install_cmd.add_argument(
        "--dry-run", action="store_true", help="render and check, print what would be applied, touch no cluster"
    )
    install_cmd.add_argument(
        "--wait", action="store_true", help="wait until every component is ready and stays ready (see --stable-seconds)"
    )
    install_cmd.add_argument("--timeout", type=float, default=300.0, help="seconds --wait may take (default 300)")
    install_cmd.add_argument(
        "--stable-seconds",
        type=float,
        default=30.0,
        help="how long components must stay ready (default 30, as Marketplace)",
    )
    install_cmd.set_defaults(run=_cmd_install)

    status_cmd = commands.add_parser(
        "status",
        help="the Application's phase and its components' readiness",
        description="Exit 0 when the Application is Success and every component is ready, 1 otherwise.",
    )
    release(status_cmd)
    cluster(status_cmd)
    output(status_cmd)
    status_cmd.set_defaults(run=_cmd_status)

    verify_cmd = commands.add_parser(
        "verify",
        help="run the tester Pod in the cluster, print its log",
        description="Run the chart's tester Pod (the verify suite) against the "
        "installed app, as mpdev verify and helm test do; exit 1 if it fails.",
    )
    common(verify_cmd)
    cluster(verify_cmd)
    output(verify_cmd)
    verify_cmd.add_argument("--timeout", type=float, default=300.0, help="seconds the tester may take (default 300)")
    verify_cmd.set_defaults(run=_cmd_verify)

    uninstall_cmd = commands.add_parser(
        "uninstall",
        help="delete the Application and everything it owns",
        description="Delete the Application, then every object labelled as its component, and wait until none is left.",
    )
    release(uninstall_cmd)
    cluster(uninstall_cmd)
    uninstall_cmd.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    uninstall_cmd.set_defaults(run=_cmd_uninstall)

    market_cmd = commands.add_parser(
        "marketplace",
        help="the Marketplace deployer Job (the deployer image's entrypoint)",
        description="Read /data/values.yaml, /data/schema.yaml and /data/chart/*.tar.gz, install into the "
        "namespace the values name, next to the placeholder Application. With --test (mpdev verify): lay "
        "/data-test over /data, wait until ready and stable, run the tester Pods, delete them.",
    )
    cluster(market_cmd)
    market_cmd.add_argument("--test", action="store_true", help="the test run of mpdev verify")
    market_cmd.add_argument("--data", type=Path, default=Path("/data"), help="the data folder (default /data)")
    market_cmd.add_argument("--data-test", type=Path, default=Path("/data-test"), help="the test overlay folder")
    market_cmd.add_argument("-f", "--values", type=Path, help="values file (default DATA/values.yaml)")
    market_cmd.add_argument(
        "--helm", help="Helm 3 binary (default: the repository's pinned .tools/bin/helm, else helm on PATH)"
    )
    market_cmd.add_argument(
        "--wait-timeout",
        type=float,
        default=os.environ.get("WAIT_FOR_READY_TIMEOUT", "300"),
        help="seconds to wait for readiness (default WAIT_FOR_READY_TIMEOUT or 300)",
    )
    market_cmd.add_argument(
        "--tester-timeout",
        type=float,
        default=os.environ.get("TESTER_TIMEOUT", "300"),
        help="seconds a tester may run (default TESTER_TIMEOUT or 300)",
    )
    market_cmd.add_argument("--stable-seconds", type=float, default=30.0, help="how long components must stay ready")
    market_cmd.set_defaults(run=_cmd_marketplace)

    monitoring_cmd = commands.add_parser(
        "monitoring",
        help="plan or apply the Cloud Monitoring alert policies, dashboards and channels",
        description="Six alert policies, four dashboards and the notification channels given, on the custom "
        "metrics the server exports. plan prints CREATE, UPDATE (with the fields that differ), NO CHANGE or "
        "DELETE per object; apply makes it so, and changes nothing when run again. Only objects labelled "
        "managed-by: erlmcp are ever changed. Secrets come from files and are never printed. Credentials: "
        "Application Default Credentials.",
    )
    _add_monitoring_arguments(monitoring_cmd)
    monitoring_cmd.set_defaults(run=_cmd_monitoring)

    for platform, (_, actions, text) in PLATFORMS.items():
        platform_cmd = commands.add_parser(
            platform,
            help=f"plan or apply {text}",
            description=f"Plan, apply or render "
            f"{text}, from the configuration file. Credentials: Application "
            "Default Credentials (render needs none: it makes no call).",
        )
        _add_platform_arguments(platform_cmd, actions)
        if platform == "secrets":  # -- secrets-only options (deployer.gcp.secrets) --
            platform_cmd.add_argument(
                "--value",
                action="append",
                default=[],
                metavar="KEY=FILE",
                help="the file whose content becomes a new version of secret KEY when it "
                "differs from the latest (compared by SHA-256, never printed); "
                "repeatable",
            )
        # -- end of secrets-only options --
        if platform == "memorystore":  # -- memorystore-only options (deployer.gcp.memorystore) --
            platform_cmd.add_argument(
                "--secret-out",
                type=Path,
                metavar="DIR",
                help="with apply: write the connection into DIR (redis-url with the AUTH "
                "string, ca.crt; mode 0600) and print the kubectl command that makes the "
                "Secret from them, or the secrets apply that stores them in Secret Manager, "
                "with the chart settings of each; the AUTH string is never printed",
            )
        # -- end of memorystore-only options --
        if platform == "logging":  # -- logging-only options (deployer.gcp.log_destinations) --
            platform_cmd.add_argument(
                "--bigquery-endpoint",
                metavar="URL",
                help="advanced: the BigQuery API endpoint (default https://bigquery.googleapis.com); with "
                "--insecure, plain HTTP without credentials",
            )
            platform_cmd.add_argument(
                "--storage-endpoint",
                metavar="URL",
                help="advanced: the Cloud Storage JSON API endpoint (default https://storage.googleapis.com); "
                "with --insecure, plain HTTP without credentials",
            )
        # -- end of logging-only options --
        platform_cmd.set_defaults(run=_cmd_platform)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for refused input, 1 for failures)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (SchemaError, ValuesError) as exc:
        print(f"deployer: {exc}", file=sys.stderr)
        return 2
    except DeployerError as exc:
        print(f"deployer: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: say so plainly, with the traceback for the report
        traceback.print_exc()
        print(f"deployer: internal error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    return code
