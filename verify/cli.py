"""``python -m verify``: run the named checks against a server and report."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from verify.checks import ALL_CHECKS
from verify.client import Target
from verify.report import render_table, write_junit
from verify.runner import run_checks

__all__ = ["build_parser", "main"]


def _default_metrics_url(url: str) -> str:
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return urlunsplit((parts.scheme, f"{host}:9090", "/metrics", "", ""))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m verify",
        description="Check a running erlmcp server from outside: health endpoints, authentication, MCP "
        "JSON-RPC behaviour and Prometheus metrics. Exit 0 only when no check fails (the authentication "
        "checks are skipped when no API key is given).",
        epilog="Checks: " + ", ".join(name for name, _ in ALL_CHECKS),
    )
    parser.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--metrics-url", help="the metrics URL (default: the --url host, port 9090, /metrics)")
    parser.add_argument("--mcp-path", default="/mcp", help="path of the MCP endpoint (default /mcp)")
    key = parser.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="API key to send (prefer --api-key-file: arguments are visible to others)")
    key.add_argument("--api-key-file", type=Path, metavar="FILE", help="file whose first key line is sent")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="also write the results as JUnit XML")
    return parser


def _read_key(path: Path, parser: argparse.ArgumentParser) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        parser.error(f"cannot read the API key file {path}: {exc.strerror or exc}")
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        parser.error(f"the API key file {path} holds no key")
    return keys[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks; returns 0 when all pass, 1 when any fails (2 for bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if urlsplit(args.url).scheme not in {"http", "https"} or not urlsplit(args.url).hostname:
        parser.error(f"--url must be an http(s) URL with a host, not {args.url!r}")
    api_key = _read_key(args.api_key_file, parser) if args.api_key_file else args.api_key
    target = Target(
        url=args.url,
        metrics_url=args.metrics_url or _default_metrics_url(args.url),
        mcp_path=args.mcp_path,
        api_key=api_key,
        timeout=args.timeout,
    )
    results = run_checks(target)
    print(render_table(results, target.mcp_url), flush=True)
    if args.junit:
        write_junit(results, args.junit)
    return 1 if any(result.failed for result in results) else 0
