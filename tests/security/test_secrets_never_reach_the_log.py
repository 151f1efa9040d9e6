"""Finding 4: catalogue secrets (and every other credential) in the log. An http tool whose URL carries
``appid={{ secrets.token }}`` had httpx log ``HTTP Request: GET ...&appid=<the secret>`` at INFO. Whatever writes a
line (the server, uvicorn, httpx, a library a tool uses), at whatever level, on success and on failure, the log
never holds a configured secret (the catalogue's secret files, the Redis password, the request-state key), an API
key or a bearer token.

A real server as the chart ships it (JSON logs at INFO), with Redis sessions behind a password and a request-state
key, a catalogue of http tools calling a real local upstream with a secret in the URL (one answers, one fails and
echoes the secret back), and a python tool whose library logs what it is given at WARNING through a third-party
logger and then raises it. A second server lets third-party loggers write at INFO (ERLMCP_LIBRARY_LOG_LEVEL):
their lines are there, without the secret.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.redis_server import RedisServer
from tests.security.conftest import ChartServer, serve_as_chart
from tests.stateless import post

pytestmark = pytest.mark.slow

UPSTREAM_SECRET = f"UPSTREAM-SECRET-{secrets.token_hex(12)}"
REDIS_PASSWORD = f"redis-pass-{secrets.token_hex(8)}"
REQUEST_STATE_KEY = f"request-state-key-{secrets.token_hex(16)}"
A_JWT = jwt.encode({"sub": "someone", "iss": "https://issuer.test"}, ec.generate_private_key(ec.SECP256R1()),
                   algorithm="ES256")  # fmt: skip

LEAKY_LIBRARY = '''
import logging

def leak(text: str) -> str:
    """A tool whose library logs what it was given at WARNING (as urllib3 logs a retried URL), then gives up."""
    logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2)) after a broken connection: %s", text)
    raise RuntimeError(f"the library gave up on {text}")
'''


class Upstream:
    """The weather API: /weather answers JSON; /fail answers 500 and echoes the request line (the secret too)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append(self.path)
                failing = self.path.startswith("/fail")
                body = (f"upstream broke on {self.path}" if failing else '{"celsius": 21}').encode()
                self.send_response(500 if failing else 200)
                self.send_header("Content-Type", "text/plain" if failing else "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def catalogue(root: Path, upstream: Upstream) -> Path:
    token = root / "weather-token"
    token.write_text(UPSTREAM_SECRET + "\n")
    (root / "leaky_library.py").write_text(LEAKY_LIBRARY)
    base = f"http://127.0.0.1:{upstream.port}"
    path = root / "catalog.yaml"
    path.write_text(
        f"allowedHosts: ['127.0.0.1:{upstream.port}']\n"
        "tools:\n"
        "  - {name: echo, description: Echo., builtin: echo}\n"
        f"  - name: weather\n"
        f"    kind: http\n"
        f"    description: Weather.\n"
        f'    url: "{base}/weather?city={{{{ city | urlencode }}}}&appid={{{{ secrets.token }}}}"\n'
        f"    secrets: {{token: {token}}}\n"
        f"    inputSchema: {{type: object, properties: {{city: {{type: string}}}}, required: [city]}}\n"
        f"  - name: weather_down\n"
        f"    kind: http\n"
        f"    description: Weather, from a broken upstream.\n"
        f'    url: "{base}/fail?city={{{{ city | urlencode }}}}&appid={{{{ secrets.token }}}}"\n'
        f'    headers: {{Authorization: "Bearer {{{{ secrets.token }}}}"}}\n'
        f"    secrets: {{token: {token}}}\n"
        f"    inputSchema: {{type: object, properties: {{city: {{type: string}}}}, required: [city]}}\n"
        "  - {name: leak, kind: python, description: A leaky library., function: 'leaky_library:leak'}\n"
    )
    return path


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    server.cli("config", "set", "requirepass", REDIS_PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["libraries-quiet", "libraries-at-info"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: Upstream,
           redis: RedisServer) -> Iterator[ChartServer]:  # fmt: skip
    root = tmp_path_factory.mktemp("secrets-catalog")
    env = {
        "ERLMCP_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis.port}/0",
        "ERLMCP_REQUEST_STATE_KEY": REQUEST_STATE_KEY,
        "PYTHONPATH": str(root),
    }
    if request.param == "libraries-at-info":
        env["ERLMCP_LIBRARY_LOG_LEVEL"] = "INFO"
    running = serve_as_chart(tmp_path_factory, request.param, args=["--catalog", str(catalogue(root, upstream))],
                             env=env)  # fmt: skip
    yield running
    running.stop()


def call(server: ChartServer, tool: str, arguments: dict[str, Any], key: str = "admin") -> dict[str, Any]:
    with httpx.Client(timeout=20) as client:
        response = post(server.mcp, "tools/call", {"name": tool, "arguments": arguments}, key=server.key(key),
                        client=client)  # fmt: skip
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def credentials(server: ChartServer) -> dict[str, str]:
    """Every credential the log must not hold, by name."""
    return {
        "the upstream secret": UPSTREAM_SECRET,
        "the Redis password": REDIS_PASSWORD,
        "the request-state key": REQUEST_STATE_KEY,
        "a JWT": A_JWT,
        **{f"the API key {name!r}": server.key(name) for name in ("admin", "limited", "other")},
    }


def wait_for(server: ChartServer, text: str, count: int = 1) -> None:
    """Wait (10 s at most) until the log holds ``text`` ``count`` times: lines are written as the answer leaves."""
    deadline = time.monotonic() + 10
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"the log never held {text!r} {count} times"
        time.sleep(0.05)


def test_no_credential_reaches_the_log_whoever_writes_it(server: ChartServer, upstream: Upstream) -> None:
    # The tool that works, the tool whose upstream fails and echoes the secret, and a library that logs and raises
    # the credentials it is handed, shaped as they travel: a header, a meta field, a URL, a bare value.
    fine = call(server, "weather", {"city": "Paris"})
    broken = call(server, "weather_down", {"city": "Paris"})
    leaked = (
        f"GET http://127.0.0.1/weather?appid={UPSTREAM_SECRET} Authorization: Bearer {server.key('admin')} "
        f"X-API-Key: {server.key('limited')} {{'io.erlmcp/apiKey': '{server.key('other')}'}} "
        f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0 state key {REQUEST_STATE_KEY} token {A_JWT}"
    )
    raised = call(server, "leak", {"text": leaked})

    # Each path was taken: the upstream saw the secret, the failures are tool errors, the lines were written.
    assert fine["isError"] is False
    assert any(UPSTREAM_SECRET in seen for seen in upstream.seen)
    assert broken["isError"] is True
    assert "500" in broken["content"][0]["text"]
    assert UPSTREAM_SECRET not in broken["content"][0]["text"]  # the caller is not told the secret either
    assert raised["isError"] is True
    wait_for(server, '"message":"tool failed"')
    records = server.log_records()
    library = [r for r in records if r.get("logger") == "urllib3.connectionpool"]
    assert library, "the library's warning is not in the log"
    assert library[0]["severity"] == "WARNING"
    failed = [r for r in records if r.get("message") == "tool failed"]
    assert failed, "the tool's failure is not in the log"
    assert "exception" in failed[0], "the tool's exception is not in the log"

    text = server.log_text()
    leaks = [name for name, value in credentials(server).items() if value in text]
    assert not leaks, f"the log holds {', '.join(leaks)}"
    # What is left says what was there.
    assert "Bearer [redacted]" in text
    assert "[redacted]" in library[0]["message"]


def test_third_party_loggers_write_at_warning_unless_the_operator_asks_otherwise(
    server: ChartServer, request: pytest.FixtureRequest
) -> None:
    access = '"message":"request"'
    before = server.log_text().count(access)
    call(server, "weather", {"city": "Lyon"})
    wait_for(server, access, before + 1)  # the call's access line is written, and every line before it
    httpx_lines = [r for r in server.log_records() if r.get("logger") == "httpx"]
    if request.node.callspec.params["server"] == "libraries-quiet":
        assert httpx_lines == [], f"httpx logged at INFO: {httpx_lines[0]}"
    else:
        assert any("HTTP Request: GET" in r["message"] and "appid=[redacted]" in r["message"] for r in httpx_lines)
