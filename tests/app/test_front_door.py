"""The front door: what ``create_app`` returns is what the listener serves, here on a real socket (uvicorn in a
thread). ``/mcp`` is bounded: past ``max_concurrent_requests`` a POST is shed at once with 503 and Retry-After.
While the server drains, every answer closes its connection and /readyz is 503. CORS preflights are answered on
/mcp and on the FastAPI paths alike. Every request is observed once: one count, and one access-log line (none for
health probes)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import orjson
import pytest
import uvicorn

from app.middleware import FrontDoor
from app.observability.access import captured
from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import create_app
from tests.conftest import free_port, wait_ready
from tests.stateless import META, post

ORIGIN = "https://console.example"
BOUND = 2
CATALOG = """
tools:
  - {name: hold, description: Holds its slot until the test lets go., kind: python,
     function: "tests.app.test_front_door:hold"}
  - {name: echo, description: Echoes., builtin: echo}
"""

ENTERED = threading.Semaphore(0)  # one release per call of ``hold`` that started
RELEASE = threading.Event()


def hold() -> str:
    """A tool that keeps its request in progress until the test sets ``RELEASE``."""
    ENTERED.release()
    return "released" if RELEASE.wait(20) else "never released"


@dataclass
class Served:
    app: FrontDoor
    metrics: Metrics
    url: str

    def count(self, method: str, code: int) -> float:
        labels = {"method": method, "code": str(code)}
        return self.metrics.registry.get_sample_value("http_requests_total", labels) or 0.0

    def sample(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    catalog = tmp_path_factory.mktemp("front-door") / "catalog.yaml"
    catalog.write_text(CATALOG)
    settings = Settings(
        no_auth=True,
        catalog=str(catalog),
        catalog_reload_seconds=0,
        rate_limit_per_second=0,
        max_concurrent_requests=BOUND,
        cors_origins=[ORIGIN],
    )
    logger = logging.getLogger("app")  # the access line is written when INFO is on, as in production
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        metrics = Metrics("test")
        app = create_app(settings, metrics=metrics)
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on", ws="websockets-sansio"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/livez")
        yield Served(app, metrics, url)
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"
    finally:
        logger.setLevel(level)


def echo(
    served: Served, text: str = "x", *, client: httpx.Client | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """A stateless (2026-07-28) tools/call of ``echo``, with ``headers`` besides the protocol's."""
    params = {"name": "echo", "arguments": {"text": text}, "_meta": META}
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    sent = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
        **(headers or {}),
    }
    if client is not None:
        return client.post(f"{served.url}/mcp", headers=sent, content=body, timeout=30)
    return httpx.post(f"{served.url}/mcp", headers=sent, content=body, timeout=30)


def test_the_lifespan_reaches_the_starlette_application(served: Served) -> None:
    assert served.sample("erlmcp_asyncio_tasks") > 0  # known once the application's lifespan started


def test_the_front_door_exposes_the_applications_state(served: Served) -> None:
    state = served.app.state
    assert state.mcp_endpoint is not None
    assert state.legacy_sse is not None
    assert state.catalog_runtime is not None
    assert state.erlmcp.draining is False


def test_past_its_bound_a_post_to_mcp_is_shed_at_once_with_503_and_retry_after(served: Served) -> None:
    held: list[httpx.Response] = []

    def call() -> None:
        held.append(post(f"{served.url}/mcp", "tools/call", {"name": "hold", "arguments": {}}))

    holders = [threading.Thread(target=call) for _ in range(BOUND)]
    shed_before = served.sample("mcp_requests_shed_total")
    try:
        for holder in holders:
            holder.start()
        for _ in range(BOUND):  # each slot is taken before its tool starts
            assert ENTERED.acquire(timeout=10), "a held call never reached its tool"
        started = time.monotonic()
        shed = echo(served)
        elapsed = time.monotonic() - started
        health = httpx.get(f"{served.url}/livez")  # only POST /mcp is bounded
    finally:
        RELEASE.set()
        for holder in holders:
            holder.join(30)
        RELEASE.clear()
    assert shed.status_code == 503
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["error"]["message"].startswith(f"Server overloaded: {BOUND} requests in progress")
    assert elapsed < 1.0  # at once, not queued behind the held calls
    assert served.sample("mcp_requests_shed_total") == shed_before + 1
    assert health.status_code == 200
    assert [r.status_code for r in held] == [200] * BOUND
    assert all(r.json()["result"]["content"][0]["text"] == "released" for r in held)
    assert echo(served, "again").status_code == 200  # the slots are free again


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/mcp", 200), ("GET", "/livez", 200), ("GET", "/readyz", 503), ("GET", "/no-such-path", 404)],
)
def test_while_draining_every_answer_closes_its_connection(served: Served, method: str, path: str, status: int) -> None:
    with httpx.Client(base_url=served.url) as client:
        served.app.state.erlmcp.draining = True
        try:
            response = echo(served, "draining", client=client) if path == "/mcp" else client.request(method, path)
        finally:
            served.app.state.erlmcp.draining = False
        after = client.get("/livez")
    assert response.status_code == status
    assert response.headers["connection"] == "close"
    assert after.headers.get("connection") != "close"
    if path == "/readyz":
        assert response.json() == {"status": "draining"}


@pytest.mark.parametrize(
    ("path", "method"), [("/mcp", "POST"), ("/mcp", "DELETE"), ("/sse", "GET"), ("/messages", "POST")]
)
def test_a_cors_preflight_from_a_configured_origin_is_answered(served: Served, path: str, method: str) -> None:
    asked = "content-type, mcp-session-id, mcp-protocol-version"
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": asked}
    response = httpx.options(f"{served.url}{path}", headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Mcp-Session-Id" in response.headers["access-control-allow-headers"]


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
def test_a_cors_preflight_from_another_origin_is_refused(served: Served, path: str) -> None:
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    response = httpx.options(f"{served.url}{path}", headers=headers)
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_an_answer_from_mcp_lets_the_browser_read_the_session_header(served: Served) -> None:
    response = echo(served, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "Mcp-Session-Id" in response.headers["access-control-expose-headers"]


def test_an_answer_from_a_starlette_route_carries_cors_headers_too(served: Served) -> None:
    response = httpx.get(f"{served.url}/livez", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN


def request(served: Served, method: str, path: str, request_id: str) -> httpx.Response:
    headers = {"X-Request-ID": request_id}
    if path == "/mcp" and method == "POST":
        return echo(served, request_id, headers=headers)
    if method == "OPTIONS":
        headers |= {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    return httpx.request(method, f"{served.url}{path}", headers=headers)


@pytest.mark.parametrize(
    ("method", "path", "status", "logged"),
    [
        ("POST", "/mcp", 200, True),
        ("OPTIONS", "/mcp", 200, True),
        ("GET", "/livez", 200, False),
        ("GET", "/readyz", 200, False),
        ("GET", "/health", 200, False),
        ("GET", "/no-such-path", 404, True),
        ("POST", "/messages?session_id=none", 404, True),
    ],
)
def test_every_request_is_counted_once_and_logged_once_unless_it_is_a_health_probe(
    served: Served, method: str, path: str, status: int, logged: bool
) -> None:
    request_id = f"front-door-{method}-{path.strip('/').split('?')[0]}"
    before = served.count(method, status)
    with captured() as lines:
        response = request(served, method, path, request_id)
        deadline = time.monotonic() + 5
        while served.count(method, status) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # counted (and logged) just after the answer went out
        time.sleep(0.1)  # room for a second observation, were there one
    assert response.status_code == status
    assert response.headers.get_list("x-request-id") == [request_id]  # echoed once, not once per observer
    assert served.count(method, status) == before + 1
    access = [line for line in lines if line["message"] == "request"]
    assert [(line["httpRequest"]["requestMethod"], line["httpRequest"]["status"]) for line in access] == (
        [(method, status)] if logged else []
    )
    assert [(line["httpRequest"]["requestUrl"], line["requestId"]) for line in access] == (
        [(path.split("?")[0], request_id)] if logged else []
    )


def raw_post(served: Served, agents: list[bytes]) -> bytes:
    """A stateless tools/call of ``echo`` over a plain socket, with exactly these User-Agent headers (httpx always
    sends one of its own); the answer's status line."""
    params = {"name": "echo", "arguments": {"text": "ua"}, "_meta": META}
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    head = [
        b"POST /mcp HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Accept: application/json",
        b"Content-Type: application/json",
        b"MCP-Protocol-Version: 2026-07-28",
        b"Mcp-Method: tools/call",
        b"Mcp-Name: echo",
        *(b"User-Agent: " + agent for agent in agents),
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("agents", "named"),
    [([b"probe/1"], "probe/1"), ([b"first/1", b"second/2"], "second/2"), ([], None), ([b"caf\xe9"], "caf\xe9")],
)
def test_the_access_line_names_the_requests_last_user_agent(
    served: Served, agents: list[bytes], named: str | None
) -> None:
    with captured() as lines:
        status_line = raw_post(served, agents)
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.01)  # logged just after the answer went out
    assert status_line == b"HTTP/1.1 200 OK"
    assert [line["httpRequest"]["userAgent"] for line in lines if line["message"] == "request"] == [named]
