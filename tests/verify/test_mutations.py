"""Mutation tests of the verify suite: a stand-in server that does everything right except one thing at a
time. Verify must pass the correct one and fail every mutant, naming the check that covers the fault."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.certificates import tls_files
from tests.conftest import ROOT, free_port, wait_ready

pytestmark = pytest.mark.slow

KEY = "good-key-0123456789abcdef"
LIMIT = 8  # the stand-in's initialize limit; verify runs with --initialize-limit 8

# fault -> the check that must name it
MUTANTS: dict[str, str] = {
    "livez_503": "health.livez",
    "readyz_503": "health.readyz",
    "metrics_unparseable": "metrics.exposition",
    "metric_missing": "metrics.exposition",
    "counters_frozen": "metrics.traffic_counted",
    "no_auth": "security.missing_credentials_refused",
    "no_bearer_challenge": "security.missing_credentials_refused",
    "any_key_accepted": "security.wrong_credentials_refused",
    "origin_ignored": "security.foreign_origin_refused",
    "no_body_limit": "security.oversized_body_refused",
    "no_rate_limit": "security.rate_limited",
    "no_retry_after": "security.rate_limited",
    "unsupported_version": "mcp.initialize",
    "no_negotiation": "mcp.version_negotiation",
    "no_session_header": "mcp.session_issued",
    "session_not_required": "mcp.session_required",
    "unknown_session_accepted": "mcp.unknown_session",
    "notification_answered": "mcp.initialized_notification",
    "ping_500": "mcp.ping",
    "no_echo_tool": "mcp.tools_list",
    "resources_not_a_list": "mcp.resources_list",
    "prompts_missing": "mcp.prompts_list",
    "json_instead_of_sse": "mcp.sse_response",
    "echo_wrong_text": "mcp.tools_call",
    "invalid_arguments_protocol_error": "mcp.tools_call_invalid_arguments",
    "wrong_method_not_found_code": "mcp.unknown_method",
    "unknown_tool_is_a_result": "mcp.unknown_tool",
    "parse_error_is_200": "mcp.parse_error",
    "delete_ignored": "mcp.session_delete",
    "no_discover": "mcp.server_discover",
    "websocket_refused": "transport.websocket",
}


def stand_in(fault: str | None) -> Starlette:
    """An MCP server that behaves correctly except for ``fault``."""
    sessions: set[str] = set()
    counters = {"tools": 0, "posts": 0}
    initialized = [0]

    def rpc(rid: Any, result: Any = None, error: dict[str, Any] | None = None, status: int = 200) -> JSONResponse:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        body.update({"error": error} if error else {"result": result})
        return JSONResponse(body, status)

    def authorized(headers: Any) -> bool:
        if fault == "no_auth":
            return True
        value = str(headers.get("authorization", ""))
        return value.startswith("Bearer ") if fault == "any_key_accepted" else value == f"Bearer {KEY}"

    def answer(method: str, params: dict[str, Any], rid: Any) -> JSONResponse:
        if method == "ping":
            return (
                rpc(rid, error={"code": -32603, "message": "boom"}, status=500) if fault == "ping_500" else rpc(rid, {})
            )
        if method == "tools/list":
            name = "mirror" if fault == "no_echo_tool" else "echo"
            return rpc(rid, {"tools": [{"name": name, "inputSchema": {"type": "object"}}]})
        if method == "resources/list":
            return rpc(rid, {"resources": {} if fault == "resources_not_a_list" else []})
        if method == "prompts/list":
            return rpc(rid, {} if fault == "prompts_missing" else {"prompts": []})
        if method == "tools/call":
            if params.get("name") != "echo":
                if fault == "unknown_tool_is_a_result":
                    return rpc(rid, {"content": [], "isError": True})
                return rpc(rid, error={"code": -32602, "message": "unknown tool"})
            counters["tools"] += 1
            text = (params.get("arguments") or {}).get("text")
            if not isinstance(text, str):
                if fault == "invalid_arguments_protocol_error":
                    return rpc(rid, error={"code": -32602, "message": "bad arguments"})
                return rpc(rid, {"content": [{"type": "text", "text": "text must be a string"}], "isError": True})
            return rpc(rid, {"content": [{"type": "text", "text": "wrong" if fault == "echo_wrong_text" else text}]})
        code = -32600 if fault == "wrong_method_not_found_code" else -32601
        return rpc(rid, error={"code": code, "message": "Method not found"})

    async def mcp(request: Request) -> Response:
        counters["posts"] += request.method == "POST"
        if request.headers.get("origin") and fault != "origin_ignored":
            return JSONResponse({"error": "origin"}, 403)
        if not authorized(request.headers):
            challenge = {} if fault == "no_bearer_challenge" else {"WWW-Authenticate": 'Bearer realm="x"'}
            return JSONResponse({"error": "no"}, 401, headers=challenge)
        session = request.headers.get("mcp-session-id")
        if request.method == "DELETE":
            if fault != "delete_ignored":
                sessions.discard(session or "")
            return Response(status_code=200)
        body = await request.body()
        if len(body) > 4 * 1024 * 1024 and fault != "no_body_limit":
            return JSONResponse({"error": "too large"}, 413)
        try:
            message = json.loads(body)
        except ValueError:
            error = {"code": -32700, "message": "Parse error"}
            return rpc(None, error=error, status=200 if fault == "parse_error_is_200" else 400)
        method, params, rid = message.get("method"), message.get("params") or {}, message.get("id")
        if request.headers.get("mcp-protocol-version") == "2026-07-28":
            if method == "server/discover" and fault != "no_discover":
                return rpc(rid, {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}})
            return rpc(rid, error={"code": -32601, "message": "Method not found"}, status=404)
        if method == "initialize":
            initialized[0] += 1
            if initialized[0] > LIMIT and fault != "no_rate_limit":
                retry = {} if fault == "no_retry_after" else {"Retry-After": "30"}
                return JSONResponse({"error": "slow down"}, 429, headers=retry)
            asked = params.get("protocolVersion")
            version = "2025-11-25" if asked not in {"2025-06-18", "2025-11-25"} else asked
            if fault == "no_negotiation":
                version = asked
            if fault == "unsupported_version":
                version = "2099-01-01"
            sessions.add(new := f"s{len(sessions) + 1}-{initialized[0]}")
            info: dict[str, Any] = {"protocolVersion": version, "capabilities": {"tools": {}},
                    "serverInfo": {"name": "stand-in", "version": "1"}}  # fmt: skip
            headers = {} if fault == "no_session_header" else {"Mcp-Session-Id": new}
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": info}, headers=headers)
        if session is None:
            if fault != "session_not_required":
                return JSONResponse({"error": "no session"}, 400)
        elif session not in sessions and fault != "unknown_session_accepted":
            return JSONResponse({"error": "unknown session"}, 404)
        if rid is None:
            return rpc(None, {}) if fault == "notification_answered" else Response(status_code=202)
        response = answer(str(method), params, rid)
        accept = request.headers.get("accept", "")
        if "application/json" not in accept and fault != "json_instead_of_sse":
            return Response(b"event: message\ndata: " + response.body + b"\n\n", media_type="text/event-stream")
        return response

    async def websocket(socket: WebSocket) -> None:
        if fault == "websocket_refused" or not authorized(socket.headers):
            await socket.close(code=1008)
            return
        await socket.accept(subprotocol="mcp")
        message = json.loads(await socket.receive_text())
        result = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}
        await socket.send_text(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}))
        await socket.close()

    def probe(path: str) -> Route:
        async def ok(_: Request) -> Response:
            failing = fault == f"{path.strip('/')}_503"
            return JSONResponse({"status": "no" if failing else "ok"}, 503 if failing else 200)

        return Route(path, ok)

    async def metrics(_: Request) -> Response:
        if fault == "metrics_unparseable":
            return PlainTextResponse("this is { not prometheus\n")
        tools, posts = (0, 0) if fault == "counters_frozen" else (counters["tools"], counters["posts"])
        text = (
            "# TYPE http_requests_total counter\n"
            f'http_requests_total{{method="POST",code="200"}} {posts}\n'
            "# TYPE http_request_duration_seconds histogram\n"
            f'http_request_duration_seconds_bucket{{method="POST",le="+Inf"}} {posts}\n'
            f'http_request_duration_seconds_count{{method="POST"}} {posts}\n'
            'http_request_duration_seconds_sum{method="POST"} 0.1\n'
            "# TYPE mcp_requests_total counter\n"
            f'mcp_requests_total{{method="tools/call",outcome="ok"}} {tools}\n'
        )
        if fault != "metric_missing":
            text += f'# TYPE mcp_tool_calls_total counter\nmcp_tool_calls_total{{tool="echo",outcome="ok"}} {tools}\n'
        return PlainTextResponse(text)

    return Starlette(routes=[
        probe("/livez"), probe("/readyz"), probe("/health"),
        Route("/mcp", mcp, methods=["POST", "DELETE"]), Route("/metrics", metrics), WebSocketRoute("/ws", websocket),
    ])  # fmt: skip


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(fault: str | None) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(stand_in(fault), port=port, log_level="error", ws="websockets-sansio"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_ready(f"http://127.0.0.1:{port}/health")
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def verify(url: str) -> tuple[int, set[str], str]:
    command = [sys.executable, "-m", "verify", "--url", url, "--metrics-url", f"{url}/metrics", "--api-key", KEY,
               "--initialize-limit", str(LIMIT)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    failing = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAIL ")}
    return done.returncode, failing, done.stdout


def test_the_stand_in_without_a_fault_passes_every_check(serve: Any) -> None:
    code, failing, output = verify(serve(None))
    assert (code, failing) == (0, set()), output
    # Credentials and a limit given: only TLS is left out, since the URL is http (the TLS tests below cover it).
    assert [line.split()[1] for line in output.splitlines() if line.startswith("SKIP ")] == ["tls.certificate"]


@pytest.mark.parametrize(("fault", "check"), sorted(MUTANTS.items()))
def test_verify_fails_a_server_with_one_fault_naming_the_check(serve: Any, fault: str, check: str) -> None:
    code, failing, output = verify(serve(fault))
    assert code == 1, output
    assert check in failing, output


@pytest.mark.parametrize(
    ("host", "days", "verdict"),
    [("127.0.0.1", 90, "PASS"), ("other.example", 90, "FAIL"), ("127.0.0.1", 3, "FAIL")],
    ids=["trusted", "wrong-host", "expiring"],
)
def test_tls_is_checked_when_the_url_is_https(tmp_path: Path, host: str, days: int, verdict: str) -> None:
    ca, cert, key = tls_files(tmp_path, host=host, days=days)
    port = free_port()
    config = uvicorn.Config(stand_in(None), port=port, log_level="error", ws="websockets-sansio",
                            ssl_certfile=str(cert), ssl_keyfile=str(key))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        command = [sys.executable, "-m", "verify", "--url", f"https://127.0.0.1:{port}", "--ca-file", str(ca),
                   "--api-key", KEY, "--only", "tls"]  # fmt: skip
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    if verdict == "PASS":
        assert done.returncode == 0, done.stdout + done.stderr
        assert "PASS tls.certificate" in done.stdout
    else:
        assert done.returncode == 1, done.stdout + done.stderr
        assert "FAIL tls.certificate" in done.stdout
