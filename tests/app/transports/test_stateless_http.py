"""The 2026-07-28 (stateless) wire on the same endpoint, in process through the real ASGI app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import create_app

VERSION = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": VERSION,
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings(no_auth=True, catalog="conformance"), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def call(
    client: TestClient,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    meta: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    accept: str = "application/json",
) -> Any:
    body_params = {**(params or {}), "_meta": {**META, **(meta or {})}}
    name = body_params.get("name") or body_params.get("uri")
    sent = {"Content-Type": "application/json", "Accept": accept, "MCP-Protocol-Version": VERSION,
            "Mcp-Method": method, **({"Mcp-Name": name} if name else {}), **(headers or {})}  # fmt: skip
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": body_params}
    return client.post("/mcp", content=orjson.dumps(body), headers=sent)


def test_discover_lists_the_version_capabilities_and_server_info(client: TestClient) -> None:
    result = call(client, "server/discover").json()["result"]
    assert result["supportedVersions"] == [VERSION]
    assert "tools" in result["capabilities"]
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "erlmcp"
    assert (result["resultType"], result["cacheScope"]) == ("complete", "public")
    assert isinstance(result["ttlMs"], int)


def test_list_results_are_typed_and_carry_caching_hints(client: TestClient) -> None:
    result = call(client, "tools/list").json()["result"]
    assert result["resultType"] == "complete"
    assert result["ttlMs"] >= 0
    assert result["cacheScope"] in {"public", "private"}


def test_a_request_without_meta_is_400_invalid_params_echoing_the_id(client: TestClient) -> None:
    response = client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 101, "method": "server/discover", "params": {}},
        headers={"MCP-Protocol-Version": VERSION, "Mcp-Method": "server/discover"},
    )
    assert response.status_code == 400
    assert (response.json()["id"], response.json()["error"]["code"]) == (101, -32602)


@pytest.mark.parametrize(
    "headers",
    [{"Mcp-Method": "tools/list"}, {"MCP-Protocol-Version": "2025-11-25x"}, {"Mcp-Name": "another_tool"}],
)
def test_headers_that_disagree_with_the_body_are_400_header_mismatch(
    client: TestClient, headers: dict[str, str]
) -> None:
    response = call(client, "tools/call", {"name": "test_simple_text", "arguments": {}}, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


def test_a_base64_encoded_name_header_is_decoded(client: TestClient) -> None:
    headers = {"Mcp-Name": "=?base64?dGVzdF9zaW1wbGVfdGV4dA==?="}
    response = call(client, "tools/call", {"name": "test_simple_text", "arguments": {}}, headers=headers)
    assert response.json()["result"]["resultType"] == "complete"


@pytest.mark.parametrize(
    ("headers", "refused"),
    [({}, True), ({"Mcp-Param-Region": "us-east"}, True), ({"Mcp-Param-Region": " eu-west "}, False),
     ({"Mcp-Param-Region": "=?base64?ZXUtd2VzdA==?="}, False)],
)  # fmt: skip
def test_an_argument_the_schema_mirrors_into_a_header_must_equal_it(
    client: TestClient, headers: dict[str, str], refused: bool
) -> None:
    response = call(client, "tools/call", {"name": "test_x_mcp_header", "arguments": {"region": "eu-west"}},
                    headers=headers)  # fmt: skip
    if refused:
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (
            -32020,
            "Header mismatch: Mcp-Param-Region must equal arguments.region",
        )
    else:
        assert response.json()["result"]["content"][0]["text"] == "region=eu-west"


def test_an_argument_left_out_needs_no_mirrored_header(client: TestClient) -> None:
    response = call(client, "tools/call", {"name": "test_x_mcp_header", "arguments": {}})
    assert response.json()["result"]["content"][0]["text"] == "region=<none>"


@pytest.mark.parametrize(
    "body",
    [{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1, "_meta": META}},
     {"jsonrpc": "2.0", "id": 7, "result": {}}],
)  # fmt: skip
def test_a_notification_is_202_and_a_response_is_refused(client: TestClient, body: dict[str, Any]) -> None:
    sent = {"Content-Type": "application/json", "Accept": "application/json", "MCP-Protocol-Version": VERSION}
    response = client.post("/mcp", content=orjson.dumps(body), headers=sent)
    if "method" in body:
        assert (response.status_code, response.content) == (202, b"")
    else:
        assert response.status_code == 400
        assert response.json()["error"]["message"] == (
            "Bad Request: a 2026-07-28 client sends no responses; answer with inputResponses"
        )


def test_an_unsupported_version_in_meta_is_400_listing_the_supported(client: TestClient) -> None:
    response = call(client, "server/discover", meta={"io.modelcontextprotocol/protocolVersion": "v9"},
                    headers={"MCP-Protocol-Version": "v9"})  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["data"]) == (-32022, {"supported": [VERSION], "requested": "v9"})


@pytest.mark.parametrize("method", ["initialize", "ping", "logging/setLevel", "resources/subscribe", "no/such"])
def test_methods_the_revision_removed_are_404_method_not_found(client: TestClient, method: str) -> None:
    response = call(client, method)
    assert (response.status_code, response.json()["error"]["code"]) == (404, -32601)


def test_get_is_405_for_a_stateless_client(client: TestClient) -> None:
    response = client.get("/mcp", headers={"MCP-Protocol-Version": VERSION, "Accept": "text/event-stream"})
    assert (response.status_code, response.headers["allow"]) == (405, "POST")


def test_an_unknown_resource_is_invalid_params_naming_the_uri(client: TestClient) -> None:
    response = call(client, "resources/read", {"uri": "test://nope"})
    assert response.json()["error"] == {"code": -32602, "message": "Resource not found: 'test://nope'",
                                        "data": {"uri": "test://nope"}}  # fmt: skip


def test_a_tool_can_ask_for_input_and_finish_with_the_answer(client: TestClient) -> None:
    first = call(client, "tools/call", {"name": "test_input_required_result_elicitation", "arguments": {}})
    result = first.json()["result"]
    assert result["resultType"] == "input_required"
    assert result["inputRequests"]["user_name"]["method"] == "elicitation/create"
    answer = {"user_name": {"action": "accept", "content": {"name": "Ada"}}}
    second = call(client, "tools/call", {"name": "test_input_required_result_elicitation", "arguments": {},
                                         "inputResponses": answer})  # fmt: skip
    assert second.json()["result"]["content"][0]["text"] == "Hello, Ada!"


def test_request_state_is_sealed_and_a_tampered_one_is_refused(client: TestClient) -> None:
    tool = {"name": "test_input_required_result_request_state", "arguments": {}}
    state = call(client, "tools/call", tool).json()["result"]["requestState"]
    assert "request-state-nonce" not in state  # opaque to the client
    answer = {"confirm": {"action": "accept", "content": {"ok": True}}}
    good = call(client, "tools/call", {**tool, "inputResponses": answer, "requestState": state})
    assert good.json()["result"]["content"][0]["text"].startswith("state-ok")
    bad = call(client, "tools/call", {**tool, "inputResponses": answer, "requestState": state + "x"})
    assert bad.json()["error"]["code"] == -32602


def test_request_state_of_one_tool_is_refused_by_another(client: TestClient) -> None:
    state = call(client, "tools/call", {"name": "test_input_required_result_request_state", "arguments": {}})
    sealed = state.json()["result"]["requestState"]
    other = call(client, "tools/call", {"name": "test_input_required_result_tampered_state", "arguments": {},
                                        "requestState": sealed})  # fmt: skip
    assert other.json()["error"]["code"] == -32602


def test_a_missing_client_capability_is_400_naming_it(client: TestClient) -> None:
    response = call(client, "tools/call", {"name": "test_missing_capability", "arguments": {}})
    assert response.status_code == 400
    assert response.json()["error"]["data"] == {"requiredCapabilities": {"sampling": {}}}


def test_progress_streams_before_the_response_when_the_client_accepts_sse(client: TestClient) -> None:
    response = call(client, "tools/call", {"name": "test_tool_with_progress", "arguments": {}},
                    meta={"progressToken": "p1"}, accept="application/json, text/event-stream")  # fmt: skip
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = [orjson.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert [m["params"]["progress"] for m in messages[:-1]] == [0, 50, 100]
    assert messages[-1]["result"]["content"][0]["text"] == "p1"


def test_no_log_messages_without_a_log_level_in_meta(client: TestClient) -> None:
    quiet = call(client, "tools/call", {"name": "test_logging_tool", "arguments": {}},
                 accept="application/json, text/event-stream")  # fmt: skip
    assert "notifications/message" not in quiet.text
    level = {"io.modelcontextprotocol/logLevel": "info"}
    loud = call(client, "tools/call", {"name": "test_logging_tool", "arguments": {}},
                meta=level, accept="application/json, text/event-stream")  # fmt: skip
    assert "notifications/message" in loud.text


def test_a_client_that_accepts_only_an_event_stream_gets_the_response_as_one(client: TestClient) -> None:
    response = call(client, "server/discover", accept="text/event-stream")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    messages = [orjson.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert [m["id"] for m in messages] == [7]
    assert VERSION in messages[0]["result"]["supportedVersions"]
