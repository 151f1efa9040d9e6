"""``python -m verify``: run the named checks against a server and report."""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from verify.checks import ALL_CHECKS, GROUPS, Check
from verify.client import Target, key_from_lines
from verify.incluster import SERVICE_ACCOUNT_DIR, InClusterError, discover
from verify.report import render_lines, render_table, write_json, write_junit
from verify.runner import run_checks

__all__ = ["build_parser", "main"]

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Checks that stand on another: (name prefix, the check it needs to have run first).
_NEEDS = (("mcp.", "mcp.initialize"), ("metrics.traffic_counted", "metrics.baseline"))


def _default_metrics_url(url: str) -> str:
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return urlunsplit((parts.scheme, f"{host}:9090", "/metrics", "", ""))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m verify",
        description="Check a running erlmcp installation from outside: health, metrics, MCP behaviour, "
        "transports, security and TLS. Exit 0 when no check failed, 1 when one did, 2 for bad usage or a "
        "target that cannot be reached. Inside a cluster, with NAMESPACE and APP_INSTANCE_NAME set and no "
        "--url, it finds the app's Services and API key itself (the Marketplace tester Pod).",
        epilog=f"Groups: {', '.join(GROUPS)}. Checks: " + ", ".join(name for name, _ in ALL_CHECKS),
    )
    parser.add_argument("--url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--metrics-url", help="the metrics URL (default: the --url host, port 9090, /metrics)")
    parser.add_argument("--mcp-path", default="/mcp", help="path of the MCP endpoint (default /mcp)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="API key to send (prefer --api-key-file: arguments are visible to others)")
    key.add_argument("--api-key-file", type=Path, metavar="FILE", help="file whose first key line is sent")
    key.add_argument("--token-file", type=Path, metavar="FILE", help="file holding a bearer token (JWT) to send")
    parser.add_argument(
        "--only",
        action="append",
        metavar="GROUP",
        default=[],
        help=f"run only this group or check (repeatable): {', '.join(GROUPS)}, or e.g. mcp.ping",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA bundle to trust for https (e.g. a self-signed certificate), or the certificate (chain) the server "
        "presents: what it holds is trusted as it is",
    )
    parser.add_argument(
        "--cert-file",
        type=Path,
        metavar="PEM",
        help="client certificate to present to a server that requires one (mutual TLS)",
    )
    parser.add_argument("--key-file", type=Path, metavar="PEM", help="the client certificate's private key")
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="the server's body limit, for the 413 check (default 4194304, the server's default)",
    )
    parser.add_argument(
        "--initialize-limit",
        type=int,
        metavar="N",
        help="the server's initialize-per-minute limit: check the 429 (uses up the limit)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--service-account-dir",
        type=Path,
        default=SERVICE_ACCOUNT_DIR,
        help=f"in-cluster mode: the service-account token folder (default {SERVICE_ACCOUNT_DIR})",
    )
    return parser


def _read_key(path: Path, parser: argparse.ArgumentParser, what: str = "API key") -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        parser.error(f"cannot read the {what} file {path}: {exc.strerror or exc}")
    key = key_from_lines(lines)
    if key is None:
        parser.error(f"the {what} file {path} holds no {what}")
    return key


def _selected(only: Sequence[str], parser: argparse.ArgumentParser) -> tuple[Check, ...]:
    if not only:
        return ALL_CHECKS
    names = {name for name, _ in ALL_CHECKS}
    unknown = [item for item in only if item not in GROUPS and item not in names]
    if unknown:
        parser.error(f"--only {', '.join(unknown)}: not a group ({', '.join(GROUPS)}) or a check name")
    wanted = {name for name, _ in ALL_CHECKS if name in only or name.split(".")[0] in only}
    for name in list(wanted):  # what a chosen check stands on: the session, the counters read before
        wanted |= {needed for prefix, needed in _NEEDS if name.startswith(prefix) and name != needed}
    return tuple(check for check in ALL_CHECKS if check[0] in wanted)


def _reachable(url: str, timeout: float) -> str | None:
    """Why nothing answers at the URL's host and port (a TCP connection), or None when something listens; what
    it says, TLS included, is for the checks to judge."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; 0 when none failed, 1 when one did, 2 for bad usage or an unreachable target."""
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = _selected(args.only, parser)
    if args.key_file and not args.cert_file:
        parser.error("--key-file needs --cert-file")
    api_key = args.api_key
    if args.api_key_file:
        api_key = _read_key(args.api_key_file, parser)
    elif args.token_file:
        api_key = _read_key(args.token_file, parser, "token")
    url, metrics_url = args.url, args.metrics_url
    namespace, app = os.environ.get("NAMESPACE"), os.environ.get("APP_INSTANCE_NAME")
    if namespace and app and (url is None or api_key is None):
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            parser.error("NAMESPACE and APP_INSTANCE_NAME are set but KUBERNETES_SERVICE_HOST is not: not in a cluster")
        api_host = f"[{host}]" if ":" in host else host
        try:
            found = discover(
                namespace,
                app,
                api_url=f"https://{api_host}:{port}",
                service_account_dir=args.service_account_dir,
                timeout=args.timeout,
            )
        except InClusterError as exc:
            print(f"verify: {exc}", file=sys.stderr)
            return EXIT_USAGE
        url, metrics_url = url or found.url, metrics_url or (found.metrics_url if args.url is None else None)
        api_key = api_key if api_key is not None else found.api_key
    if url is None:
        parser.error("give --url (or run in a cluster with NAMESPACE and APP_INSTANCE_NAME set)")
    if urlsplit(url).scheme not in {"http", "https"} or not urlsplit(url).hostname:
        parser.error(f"--url must be an http(s) URL with a host, not {url!r}")
    target = Target(
        url=url,
        metrics_url=metrics_url or _default_metrics_url(url),
        mcp_path=args.mcp_path,
        api_key=api_key,
        timeout=args.timeout,
        ca_file=str(args.ca_file) if args.ca_file else None,
        client_cert_file=str(args.cert_file) if args.cert_file else None,
        client_key_file=str(args.key_file) if args.key_file else None,
        max_request_bytes=args.max_request_bytes,
        initialize_limit=args.initialize_limit,
    )
    try:
        target.tls_context()
    except (OSError, ssl.SSLError) as exc:
        print(f"verify: the CA bundle or client certificate cannot be used: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = _reachable(target.url, args.timeout)
    if problem is not None:
        print(f"verify: cannot reach {target.url}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    results = run_checks(target, checks)
    render = render_table if sys.stdout.isatty() else render_lines
    print(render(results, target.mcp_url), flush=True)
    if args.junit:
        write_junit(results, args.junit)
    if args.json:
        write_json(results, target.mcp_url, args.json)
    return EXIT_FAILED if any(result.failed for result in results) else EXIT_PASSED
