"""``python -m deployer``: render the chart from Marketplace values, run it locally, or install it."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deployer.errors import DeployerError, SchemaError, ValuesError
from deployer.expand import IMAGE_REPO_PREFIX
from deployer.helm import find_helm
from deployer.kube import apply_manifests
from deployer.local import LocalServer, default_entrypoint, plan_local_run
from deployer.render import Rendered, render
from deployer.schema import load_schema

__all__ = ["build_parser", "main"]


def _read_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValuesError(f"cannot read the values file {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValuesError(f"the values file {path} is not valid UTF-8 YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValuesError(f"the values file {path} must hold a mapping of property names to values")
    return data


def _render(args: argparse.Namespace) -> Rendered:
    schema = load_schema(args.schema)
    values = _read_values(args.values)
    name_key = schema.property_of_type("NAME").name
    namespace_key = schema.property_of_type("NAMESPACE").name
    values.setdefault(name_key, args.name)
    values.setdefault(namespace_key, args.namespace)
    if args.image_repo_prefix:
        values[IMAGE_REPO_PREFIX] = args.image_repo_prefix
    return render(schema, values, chart=args.chart, helm=find_helm(args.helm))


def _cmd_render(args: argparse.Namespace) -> int:
    rendered = _render(args)
    if args.output:
        try:
            args.output.write_text(rendered.text, encoding="utf-8")
        except OSError as exc:
            raise DeployerError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    else:
        sys.stdout.write(rendered.text)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    rendered = _render(args)
    root = Path(tempfile.mkdtemp(prefix="erlmcp-demo-"))
    try:
        plan = plan_local_run(rendered.manifests, root=root, entrypoint=default_entrypoint())
        print(
            f"== rendered {len(rendered.manifests)} objects for release {rendered.release!r}; running its Pod locally"
        )
        print(plan.describe())
        server = LocalServer(plan, root / "server.log")
        try:
            server.start(ready_timeout=args.ready_timeout)
            http, metrics = plan.ports["http"], plan.ports["metrics"]
            command = [
                sys.executable, "-m", "verify",
                "--url", f"http://127.0.0.1:{http}",
                "--metrics-url", f"http://127.0.0.1:{metrics}/metrics",
            ]  # fmt: skip
            key_file = plan.env.get("ERLMCP_API_KEY_FILE")
            if key_file:
                command += ["--api-key-file", key_file]
            if args.junit:
                command += ["--junit", str(args.junit)]
            print("== verify: " + " ".join(command[1:]), flush=True)
            verified = subprocess.run(command, check=False).returncode
        finally:
            code = server.stop()
        print(
            f"== server stopped (exit {code}); its log: {server.log_path}"
            if args.keep
            else f"== server stopped (exit {code})"
        )
        if verified != 0 or code != 0:
            print(f"== demo FAILED (verify exit {verified}, server exit {code}); server log tail:\n{server.log_tail()}")
            return 1
        print("== demo passed")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _cmd_install(args: argparse.Namespace) -> int:
    rendered = _render(args)
    print(apply_manifests(rendered.text, namespace=rendered.namespace, kubectl=args.kubectl, context=args.context))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m deployer",
        description="Render the erlmcp Helm chart from Marketplace schema v2 values, as Google's deployer does "
        "(schema defaults, generated passwords, image projections, dotted names -> nested Helm values), "
        "then print it, run it locally, or apply it to a cluster.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "-f",
            "--values",
            type=Path,
            metavar="VALUES",
            help="Marketplace values file: property names (flat or nested) to values",
        )
        sub.add_argument("--schema", type=Path, default=Path("schema.yaml"), help="schema file (default schema.yaml)")
        sub.add_argument("--chart", type=Path, default=Path("chart"), help="chart directory (default chart)")
        sub.add_argument("--name", default="erlmcp", help="release name when the values give none (default erlmcp)")
        sub.add_argument("--namespace", default="default", help="namespace when the values give none")
        sub.add_argument(
            "--image-repo-prefix",
            metavar="PREFIX",
            help=f"image repository prefix (sets {IMAGE_REPO_PREFIX}, e.g. gcr.io/PROJECT/erlmcp)",
        )
        sub.add_argument("--helm", help="Helm 3 binary (default: helm on PATH)")

    render_cmd = commands.add_parser(
        "render",
        help="print the rendered manifests",
        description="Print the manifests Marketplace would apply for these values.",
    )
    common(render_cmd)
    render_cmd.add_argument("-o", "--output", type=Path, help="write the manifests here instead of stdout")
    render_cmd.set_defaults(run=_cmd_render)

    demo_cmd = commands.add_parser(
        "demo",
        help="run the rendered server locally and verify it",
        description="Render the chart, start the server as a local process with the Pod's env, mounted "
        "ConfigMaps and Secrets, and ports, run the verify suite against it, stop it. Touches no cluster.",
    )
    common(demo_cmd)
    demo_cmd.add_argument("--junit", type=Path, metavar="FILE", help="also write the verify report as JUnit XML")
    demo_cmd.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for /readyz")
    demo_cmd.add_argument("--keep", action="store_true", help="keep the local Pod folder and server log")
    demo_cmd.set_defaults(run=_cmd_demo)

    install_cmd = commands.add_parser(
        "install",
        help="render and kubectl apply into the current cluster",
        description="Render the chart and apply it with kubectl to the cluster "
        "of the current (or given) kubeconfig context.",
    )
    common(install_cmd)
    install_cmd.add_argument("--kubectl", help="kubectl binary (default: kubectl on PATH)")
    install_cmd.add_argument("--context", help="kubeconfig context (default: the current one)")
    install_cmd.set_defaults(run=_cmd_install)
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
    return code
