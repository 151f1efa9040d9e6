"""The MCP endpoint over HTTP, in process through Starlette's TestClient (the real ASGI app)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import create_app

KEY = "k-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """A client with an open session: its headers carry the key and the session id."""
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n", encoding="utf-8")
    app = create_app(Settings(api_key_file=keys, max_request_bytes=1024), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        opened = test_client.post("/mcp", json=rpc("initialize", INIT, request_id=0), headers=AUTH)
        AUTH_SESSION.clear()
        AUTH_SESSION.update({**AUTH, "Mcp-Session-Id": opened.headers["mcp-session-id"]})
        yield test_client


AUTH_SESSION: dict[str, str] = {}


def rpc(method: str, params: dict[str, Any] | None = None, request_id: int | None = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        body["id"] = request_id
    if params is not None:
        body["params"] = params
    return body


def test_initialize_answers_the_requested_supported_revision(client: TestClient) -> None:
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    response = client.post("/mcp", json=rpc("initialize", params), headers=AUTH)
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"]["name"] == "erlmcp"
    # The built-in catalogue: tools, a resource and a prompt (with completion); it cannot change while running.
    assert result["capabilities"] == {"tools": {"listChanged": False}, "logging": {}, "completions": {},
                                      "resources": {"subscribe": True, "listChanged": False},
                                      "prompts": {"listChanged": False}}  # fmt: skip


def test_initialize_with_an_unknown_revision_answers_the_latest(client: TestClient) -> None:
    params = {"protocolVersion": "1999-01-01", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    result = client.post("/mcp", json=rpc("initialize", params), headers=AUTH).json()["result"]
    assert result["protocolVersion"] == "2025-11-25"


def test_initialize_without_a_protocol_version_is_invalid_params(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("initialize", {}), headers=AUTH)
    assert response.json()["error"]["code"] == -32602


def test_a_notification_is_accepted_with_202_and_no_body(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("notifications/initialized", request_id=None), headers=AUTH_SESSION)
    assert (response.status_code, response.content) == (202, b"")


def test_ping_answers_an_empty_result(client: TestClient) -> None:
    assert client.post("/mcp", json=rpc("ping"), headers=AUTH_SESSION).json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {},
    }


def test_tools_call_echo_round_trips_the_text(client: TestClient) -> None:
    body = rpc("tools/call", {"name": "echo", "arguments": {"text": "abc"}})
    result = client.post("/mcp", json=body, headers=AUTH_SESSION).json()["result"]
    assert result == {"content": [{"type": "text", "text": "abc"}], "isError": False}


def test_an_unknown_method_is_method_not_found(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("no/such"), headers=AUTH_SESSION)
    assert (response.status_code, response.json()["error"]["code"]) == (200, -32601)


def test_a_request_without_a_key_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == -32600


def test_a_wrong_key_is_401(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"), headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_the_key_is_also_accepted_in_x_api_key(client: TestClient) -> None:
    headers = {"X-API-Key": KEY, "Mcp-Session-Id": AUTH_SESSION["Mcp-Session-Id"]}
    assert client.post("/mcp", json=rpc("ping"), headers=headers).status_code == 200


def test_malformed_json_is_400_with_parse_error(client: TestClient) -> None:
    response = client.post("/mcp", content=b"{", headers={**AUTH_SESSION, "Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]["code"], response.json()["id"]) == (400, -32700, None)


def test_a_batch_is_400_invalid_request(client: TestClient) -> None:
    response = client.post("/mcp", json=[rpc("ping")], headers=AUTH_SESSION)
    assert (response.status_code, response.json()["error"]["code"]) == (400, -32600)


def test_an_invalid_request_names_its_id_when_readable(client: TestClient) -> None:
    response = client.post(
        "/mcp", json={"jsonrpc": "2.0", "id": 4, "method": "ping", "params": 1}, headers=AUTH_SESSION
    )
    assert (response.status_code, response.json()["id"]) == (400, 4)


def test_a_body_that_is_not_json_typed_is_415(client: TestClient) -> None:
    response = client.post("/mcp", content=b"{}", headers={**AUTH_SESSION, "Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


def test_an_accept_header_without_json_is_406(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"), headers={**AUTH_SESSION, "Accept": "text/html"})
    assert response.status_code == 406


def test_a_client_that_accepts_only_an_event_stream_gets_the_response_as_one(client: TestClient) -> None:
    response = client.post(
        "/mcp", json=rpc("ping", request_id=7), headers={**AUTH_SESSION, "Accept": "text/event-stream"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    assert [json.loads(data) for data in events] == [{"jsonrpc": "2.0", "id": 7, "result": {}}]


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    body = rpc("tools/call", {"name": "echo", "arguments": {"text": "x" * 2048}})
    response = client.post("/mcp", json=body, headers=AUTH_SESSION)
    assert response.status_code == 413


def test_an_unknown_protocol_version_header_is_treated_as_stateless_and_refused_with_400(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"), headers={**AUTH_SESSION, "MCP-Protocol-Version": "1999-01-01"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32602  # no _meta: not a request of any revision we speak
    assert response.json()["id"] == 1


def test_put_is_405(client: TestClient) -> None:
    assert client.request("PUT", "/mcp", headers=AUTH_SESSION).status_code == 405


def test_a_request_without_a_session_is_400(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"), headers=AUTH)
    assert (response.status_code, response.json()["error"]["code"]) == (400, -32600)


def test_a_request_with_an_unknown_session_is_404(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"), headers={**AUTH, "Mcp-Session-Id": "nope"})
    assert response.status_code == 404


def test_a_session_is_bound_to_the_key_that_opened_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("key-one-0123456789\nkey-two-0123456789\n", encoding="utf-8")
    app = create_app(Settings(api_key_file=keys), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        one = {"Authorization": "Bearer key-one-0123456789"}
        opened = test_client.post("/mcp", json=rpc("initialize", INIT), headers=one)
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
        stolen = test_client.post("/mcp", json=rpc("ping"), headers={"Authorization": "Bearer key-two-0123456789",
                                                                      **session})  # fmt: skip
        assert stolen.status_code == 404
        assert test_client.post("/mcp", json=rpc("ping"), headers={**one, **session}).status_code == 200


def test_delete_ends_the_session(client: TestClient) -> None:
    assert client.delete("/mcp", headers=AUTH_SESSION).status_code == 200
    assert client.post("/mcp", json=rpc("ping"), headers=AUTH_SESSION).status_code == 404


def test_get_without_accepting_an_event_stream_is_406(client: TestClient) -> None:
    assert client.get("/mcp", headers={**AUTH_SESSION, "Accept": "application/json"}).status_code == 406


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Host": "evil.example"}, 421), ({"Origin": "http://evil.example"}, 403)],
)
def test_a_loopback_server_refuses_foreign_host_and_origin_headers(
    client: TestClient, headers: dict[str, str], status: int
) -> None:
    assert client.post("/mcp", json=rpc("ping"), headers={**AUTH_SESSION, **headers}).status_code == status


def test_a_loopback_origin_is_accepted(client: TestClient) -> None:
    response = client.post("/mcp", json=rpc("ping"), headers={**AUTH_SESSION, "Origin": "http://localhost:3000"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz", "/health"])
def test_health_endpoints_answer_without_credentials(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_readiness_fails_while_draining(client: TestClient) -> None:
    client.app.state.erlmcp.draining = True  # type: ignore[attr-defined]
    assert client.get("/readyz").status_code == 503
    assert client.get("/livez").status_code == 200


def test_unknown_http_methods_do_not_create_metric_series(tmp_path: Path) -> None:
    metrics = Metrics("test")
    app = create_app(Settings(no_auth=True), metrics=metrics)
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        for i in range(3):
            test_client.request(f"FOO{i}", "/mcp")
    methods = {s.labels["method"] for m in metrics.registry.collect() if m.name == "http_requests" for s in m.samples}
    assert methods == {"OTHER"}


def open_session(client: TestClient, version: str) -> dict[str, str]:
    params = {**INIT, "protocolVersion": version}
    opened = client.post("/mcp", json=rpc("initialize", params, request_id=0), headers=AUTH)
    assert opened.json()["result"]["protocolVersion"] == version
    return {**AUTH, "Mcp-Session-Id": opened.headers["mcp-session-id"]}


def test_a_2025_03_26_session_may_send_a_batch_and_gets_the_answers_in_an_array(client: TestClient) -> None:
    headers = open_session(client, "2025-03-26")
    batch = [rpc("ping", request_id=1), rpc("notifications/initialized", request_id=None), rpc("no/such", request_id=2),
             {"jsonrpc": "2.0", "id": 3}]  # fmt: skip
    answers = client.post("/mcp", json=batch, headers=headers).json()
    by_id = {answer["id"]: answer for answer in answers}
    assert by_id[1]["result"] == {}
    assert by_id[2]["error"]["code"] == -32601
    assert by_id[3]["error"]["code"] == -32600
    assert len(answers) == 3


def test_a_batch_of_notifications_only_is_202(client: TestClient) -> None:
    headers = open_session(client, "2025-03-26")
    response = client.post("/mcp", json=[rpc("notifications/initialized", request_id=None)], headers=headers)
    assert response.status_code == 202


def test_initialize_inside_a_batch_is_refused(client: TestClient) -> None:
    headers = open_session(client, "2025-03-26")
    answers = client.post("/mcp", json=[rpc("initialize", INIT, request_id=5)], headers=headers).json()
    assert answers[0]["error"]["code"] == -32600


@pytest.mark.parametrize("version", ["2024-11-05", "2025-06-18", "2025-11-25"])
def test_revisions_without_batching_refuse_a_batch(client: TestClient, version: str) -> None:
    headers = open_session(client, version)
    response = client.post("/mcp", json=[rpc("ping")], headers=headers)
    assert (response.status_code, response.json()["error"]["code"]) == (400, -32600)


def test_stateless_mode_issues_no_session_and_serves_requests_without_one() -> None:
    app = create_app(Settings(no_auth=True, stateless=True), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        opened = test_client.post("/mcp", json=rpc("initialize", INIT))
        assert "mcp-session-id" not in opened.headers
        called = test_client.post("/mcp", json=rpc("tools/call", {"name": "echo", "arguments": {"text": "x"}}))
        assert called.json()["result"]["content"][0]["text"] == "x"
        assert test_client.get("/mcp", headers={"Accept": "text/event-stream"}).status_code == 405


def test_initialize_is_limited_per_client_with_retry_after() -> None:
    app = create_app(Settings(no_auth=True, initialize_per_minute=2), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        statuses = [test_client.post("/mcp", json=rpc("initialize", INIT)).status_code for _ in range(3)]
        refused = test_client.post("/mcp", json=rpc("initialize", INIT))
    assert statuses == [200, 200, 429]
    assert int(refused.headers["retry-after"]) >= 1


def test_a_full_session_store_answers_503_with_retry_after() -> None:
    app = create_app(Settings(no_auth=True, max_sessions=1), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        assert test_client.post("/mcp", json=rpc("initialize", INIT)).status_code == 200
        full = test_client.post("/mcp", json=rpc("initialize", INIT))
    assert full.status_code == 503
    assert full.headers["retry-after"]
