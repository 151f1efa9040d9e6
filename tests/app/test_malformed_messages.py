"""Property-based: malformed and mutated messages of every request type never crash the server or earn a 5xx.

Each answer is either a result or a JSON-RPC error with a code the specification defines for bad input, and the
server keeps answering well-formed requests afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import create_app
from tests.messages import CLIENT_ERRORS, INIT, METHODS, STATELESS_META, ids, json_values, params


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(no_auth=True, catalog="conformance", tool_timeout_seconds=2), metrics=Metrics("t"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def session(client: TestClient) -> dict[str, str]:
    opened = client.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
    return {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Accept": "application/json"}


def assert_well_answered(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code in {202, 204} or not response.content:
        return
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert body.get("jsonrpc") == "2.0"
    if "error" in body:
        assert body["error"]["code"] in CLIENT_ERRORS, body
        assert body["error"]["message"]
    else:
        assert isinstance(body["result"], dict)


def still_alive(client: TestClient, headers: dict[str, str]) -> None:
    ping = client.post("/mcp", json={"jsonrpc": "2.0", "id": "alive", "method": "ping"}, headers=headers)
    assert ping.json()["result"] == {}


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(method=st.sampled_from(METHODS), request_id=ids, body_params=params)
def test_mutated_handshake_era_requests_get_client_errors_never_5xx(
    client: TestClient, session: dict[str, str], method: str, request_id: Any, body_params: dict[str, Any]
) -> None:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": body_params}
    if request_id is not None:
        body["id"] = request_id
    assert_well_answered(
        client.post("/mcp", content=json.dumps(body).encode(), headers={**session, "Content-Type": "application/json"})
    )
    still_alive(client, session)


@SETTINGS
@given(method=st.sampled_from(METHODS), body_params=params, meta=st.none() | json_values)
def test_mutated_stateless_requests_get_client_errors_never_5xx(
    client: TestClient, method: str, body_params: dict[str, Any], meta: Any
) -> None:
    sent = {**body_params, "_meta": STATELESS_META if meta is None else meta}
    headers = {"Content-Type": "application/json", "Accept": "application/json", "MCP-Protocol-Version": "2026-07-28",
               "Mcp-Method": method}  # fmt: skip
    name = sent.get("name") if method in {"tools/call", "prompts/get"} else sent.get("uri")
    if isinstance(name, str) and name.isascii() and name.isprintable():
        headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": sent}
    assert_well_answered(client.post("/mcp", content=json.dumps(body).encode(), headers=headers))


@SETTINGS
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bodies_get_client_errors_never_5xx(client: TestClient, session: dict[str, str], raw: bytes) -> None:
    response = client.post("/mcp", content=raw, headers={**session, "Content-Type": "application/json"})
    assert_well_answered(response)
    still_alive(client, session)


@SETTINGS
@given(envelope=st.dictionaries(st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]),
                                json_values, max_size=6))  # fmt: skip
def test_mutated_envelopes_get_client_errors_never_5xx(
    client: TestClient, session: dict[str, str], envelope: dict[str, Any]
) -> None:
    response = client.post(
        "/mcp", content=json.dumps(envelope).encode(), headers={**session, "Content-Type": "application/json"}
    )
    assert_well_answered(response)
    still_alive(client, session)
