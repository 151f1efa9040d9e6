"""The verify suite against a real server, and against servers that answer wrongly: it must fail, naming the check."""

from __future__ import annotations

import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.conftest import ROOT, RunningServer, free_port, wait_ready

pytestmark = pytest.mark.slow

GOOD_METRICS = (
    "# TYPE http_requests_total counter\n"
    'http_requests_total{method="POST",code="200"} 20\n'
    "# TYPE http_request_duration_seconds histogram\n"
    'http_request_duration_seconds_bucket{method="POST",le="+Inf"} 20\n'
    'http_request_duration_seconds_count{method="POST"} 20\n'
    'http_request_duration_seconds_sum{method="POST"} 0.1\n'
    "# TYPE mcp_requests_total counter\n"
    'mcp_requests_total{method="tools/call",outcome="ok"} 3\n'
)


def fake_server_app(fault: str | None) -> Starlette:
    """A stand-in MCP server that behaves correctly except for the one injected fault."""

    sessions: set[str] = set()

    async def mcp(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer good":
            return JSONResponse({"error": "no"}, 401, headers={"WWW-Authenticate": "Bearer"})
        session = request.headers.get("mcp-session-id")
        if request.method == "DELETE":
            sessions.discard(session or "")
            return Response(status_code=200)
        try:
            message = await request.json()
        except ValueError:
            return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse"}}, 400)
        if message.get("method") == "initialize":
            sessions.add(f"s{len(sessions) + 1}")
            info = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "fake", "version": "1"}}  # fmt: skip
            body = {"jsonrpc": "2.0", "id": message["id"], "result": info}
            return JSONResponse(body, headers={"Mcp-Session-Id": f"s{len(sessions)}"})
        if session is None:
            return JSONResponse({"error": "no session"}, 400)
        if session not in sessions:
            return JSONResponse({"error": "unknown session"}, 404)
        if "id" not in message:
            return Response(status_code=202)
        method, params, rid = message["method"], message.get("params") or {}, message["id"]
        result: dict[str, Any]
        if method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": [{"name": "echo", "description": "e", "inputSchema": {"type": "object"}}]}
        elif method == "tools/call" and params.get("name") == "echo":
            text = params.get("arguments", {}).get("text")
            if not isinstance(text, str):
                result = {"content": [{"type": "text", "text": "bad"}], "isError": True}
            else:
                result = {"content": [{"type": "text", "text": "wrong" if fault == "tools_call" else text}]}
        elif method == "tools/call":
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "unknown tool"}})
        else:
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "not found"}})
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result})

    async def ok(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        if fault == "metrics":
            return PlainTextResponse("this is { not prometheus\n")
        return PlainTextResponse(GOOD_METRICS)

    routes = [Route(p, ok) for p in ("/livez", "/readyz", "/health")]
    return Starlette(routes=[*routes, Route("/mcp", mcp, methods=["POST", "DELETE"]), Route("/metrics", metrics)])


@pytest.fixture(params=[None, "metrics", "tools_call"])
def fake_server(request: pytest.FixtureRequest) -> Iterator[tuple[str | None, int]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake_server_app(request.param), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_ready(f"http://127.0.0.1:{port}/livez")
    yield request.param, port
    server.should_exit = True
    thread.join(timeout=10)


def run_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "verify", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_verify_fails_naming_the_check_when_metrics_or_tools_call_are_wrong(
    fake_server: tuple[str | None, int],
) -> None:
    fault, port = fake_server
    url = f"http://127.0.0.1:{port}"
    result = run_verify("--url", url, "--metrics-url", f"{url}/metrics", "--api-key", "good")
    failing = {line.split()[0] for line in result.stdout.splitlines() if "  FAIL  " in line}
    expected = {
        None: set(),
        "metrics": {"metrics.exposition", "metrics.traffic_counted"},
        "tools_call": {"mcp.tools_call"},
    }[fault]
    assert failing == expected, result.stdout
    assert result.returncode == (0 if fault is None else 1)


def test_verify_passes_against_the_real_server_and_writes_junit(server: RunningServer, tmp_path: Path) -> None:
    junit = tmp_path / "report.xml"
    result = run_verify(
        "--url", server.url, "--metrics-url", server.metrics_url,
        "--api-key", "test-key-0123456789abcdef", "--junit", str(junit),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().endswith("20 passed, 0 failed")
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("20", "0")


def test_verify_fails_auth_checks_against_a_server_with_auth_off(tmp_path: Path) -> None:
    from tests.conftest import start_server

    open_server = start_server(tmp_path, ["--no-auth"])
    try:
        result = run_verify("--url", open_server.url, "--metrics-url", open_server.metrics_url, "--api-key", "any")
    finally:
        open_server.stop()
    assert result.returncode == 1
    assert "auth.missing_key_refused" in result.stdout


def test_verify_reports_every_check_failed_when_nothing_listens() -> None:
    port = free_port()
    result = run_verify("--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert result.returncode == 1
    assert "0 passed, 18 failed, 2 skipped" in result.stdout


def test_verify_refuses_a_url_that_is_not_http() -> None:
    result = run_verify("--url", "ftp://example")
    assert result.returncode == 2
    assert "--url" in result.stderr


def test_the_default_metrics_url_keeps_ipv6_brackets() -> None:
    from verify.cli import _default_metrics_url

    assert _default_metrics_url("http://[::1]:8080") == "http://[::1]:9090/metrics"
