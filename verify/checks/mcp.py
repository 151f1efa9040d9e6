"""MCP over JSON-RPC: the handshake, ping, tools, and errors with the right codes."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from verify.client import CheckFailed, WireClient, json_body, response_message, sse_messages

__all__ = ["CHECKS"]

HANDSHAKE_REVISIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
STATELESS_REVISION = "2026-07-28"


def check_initialize(client: WireClient) -> str:
    """initialize answers a supported revision, server info and the tools capability."""
    result = client.initialize()
    version = result.get("protocolVersion")
    if version not in HANDSHAKE_REVISIONS:
        raise CheckFailed(f"initialize: protocolVersion {version!r} is not a revision clients speak")
    info = result.get("serverInfo")
    if not isinstance(info, dict) or not info.get("name") or not info.get("version"):
        raise CheckFailed(f"initialize: serverInfo needs name and version, got {info!r}")
    capabilities = result.get("capabilities")
    if not isinstance(capabilities, dict) or "tools" not in capabilities:
        raise CheckFailed(f"initialize: capabilities must declare tools, got {capabilities!r}")
    return f"protocolVersion {version}, server {info['name']} {info['version']}"


def check_version_negotiation(client: WireClient) -> str:
    """A client asking for a revision the server does not know gets one the server supports (not an error)."""
    params = {
        "protocolVersion": "1999-01-01",
        "capabilities": {},
        "clientInfo": {"name": "erlmcp-verify", "version": "1"},
    }
    response = client.post({"jsonrpc": "2.0", "id": 9100, "method": "initialize", "params": params}, with_session=False)
    message = response_message(response, 9100, "initialize with revision 1999-01-01")
    version = (message.get("result") or {}).get("protocolVersion")
    if session := response.headers.get("mcp-session-id"):  # close the extra session again
        client.http.delete(
            client.target.mcp_url, headers={**client.headers(with_session=False), "Mcp-Session-Id": session}
        )
    if version not in HANDSHAKE_REVISIONS:
        raise CheckFailed(f"initialize asking for 1999-01-01 must answer a supported revision, got {message}")
    return f"1999-01-01 -> {version}"


def check_server_discover(client: WireClient) -> str:
    """The 2026-07-28 revision: server/discover, with no session, lists the versions and capabilities."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": STATELESS_REVISION,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 9200, "method": "server/discover", "params": {"_meta": meta}}
    headers = {"MCP-Protocol-Version": STATELESS_REVISION, "Mcp-Method": "server/discover"}
    response = client.post(body, with_session=False, headers=headers)
    message = response_message(response, 9200, "server/discover")
    result = message.get("result")
    if not isinstance(result, dict):
        raise CheckFailed(f"server/discover: expected a result, got {message}")
    versions = result.get("supportedVersions")
    if not isinstance(versions, list) or STATELESS_REVISION not in versions:
        raise CheckFailed(f"server/discover: supportedVersions must include {STATELESS_REVISION}, got {versions!r}")
    if not isinstance(result.get("capabilities"), dict):
        raise CheckFailed(f"server/discover: capabilities must be an object, got {result.get('capabilities')!r}")
    return f"versions {', '.join(map(str, versions))}"


def _listing(method: str, key: str) -> Callable[[WireClient], str]:
    def check(client: WireClient) -> str:
        items = client.result(method).get(key)
        if not isinstance(items, list):
            raise CheckFailed(f"{method}: {key} must be a list, got {items!r}")
        return f"{len(items)} {key}"

    check.__doc__ = f"{method} answers a list of {key}."
    return check


def check_sse_response(client: WireClient) -> str:
    """A client that accepts only an event stream gets its response as one."""
    response = client.post({"jsonrpc": "2.0", "id": 9300, "method": "ping"}, headers={"Accept": "text/event-stream"})
    if response.status_code != 200:
        raise CheckFailed(f"ping accepting only text/event-stream: expected 200, got {response.status_code}")
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise CheckFailed(f"ping accepting only text/event-stream: got {content_type!r}")
    answers = [m for m in sse_messages(response.text) if m.get("id") == 9300]
    if not answers or answers[-1].get("result") != {}:
        raise CheckFailed(
            f"ping accepting only text/event-stream: no ping result in the stream {response.text[:200]!r}"
        )
    return "the response came as an event"


def check_session_issued(client: WireClient) -> str:
    """initialize opened a session: the response carried an Mcp-Session-Id of visible ASCII."""
    session_id = client.session_id
    if not session_id:
        raise CheckFailed("initialize: the response carried no Mcp-Session-Id header")
    if not all(0x21 <= ord(c) <= 0x7E for c in session_id):
        raise CheckFailed(f"initialize: Mcp-Session-Id {session_id!r} holds characters outside visible ASCII")
    return f"session id of {len(session_id)} characters"


def check_session_required(client: WireClient) -> str:
    """A request without the session id is 400."""
    response = client.post({"jsonrpc": "2.0", "id": 9001, "method": "ping"}, with_session=False)
    if response.status_code != 400:
        raise CheckFailed(f"a request without Mcp-Session-Id: expected 400, got {response.status_code}")
    return "400 without Mcp-Session-Id"


def check_unknown_session(client: WireClient) -> str:
    """A request with an unknown session id is 404, so the client knows to initialize again."""
    headers = {"Mcp-Session-Id": "verify-no-such-session"}
    response = client.post({"jsonrpc": "2.0", "id": 9002, "method": "ping"}, headers=headers)
    if response.status_code != 404:
        raise CheckFailed(f"a request with an unknown Mcp-Session-Id: expected 404, got {response.status_code}")
    return "404 for an unknown session"


def check_session_delete(client: WireClient) -> str:
    """DELETE ends the session; the ended session is 404 afterwards."""
    deleted = client.http.delete(client.target.mcp_url, headers=client.headers())
    if deleted.status_code not in {200, 204}:
        raise CheckFailed(f"DELETE of the session: expected 200 or 204, got {deleted.status_code}")
    after = client.post({"jsonrpc": "2.0", "id": 9003, "method": "ping"})
    if after.status_code != 404:
        raise CheckFailed(f"a request on the deleted session: expected 404, got {after.status_code}")
    return f"DELETE {deleted.status_code}, then 404"


def check_initialized_notification(client: WireClient) -> str:
    """A notification is accepted with 202 and no body."""
    response = client.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    if response.status_code != 202:
        raise CheckFailed(f"notifications/initialized: expected 202, got {response.status_code}")
    if response.content:
        raise CheckFailed(f"notifications/initialized: expected no body, got {response.content[:100]!r}")
    return "202, no body"


def check_ping(client: WireClient) -> str:
    """ping answers an empty result."""
    result = client.result("ping")
    if result != {}:
        raise CheckFailed(f"ping: expected an empty result, got {result!r}")
    return "empty result"


def check_tools_list(client: WireClient) -> str:
    """tools/list offers echo with an object input schema."""
    tools = client.result("tools/list").get("tools")
    if not isinstance(tools, list):
        raise CheckFailed(f"tools/list: tools must be a list, got {tools!r}")
    by_name = {tool.get("name"): tool for tool in tools if isinstance(tool, dict)}
    echo = by_name.get("echo")
    if echo is None:
        raise CheckFailed(f"tools/list: no echo tool among {sorted(map(str, by_name))}")
    schema = echo.get("inputSchema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise CheckFailed(f"tools/list: echo's inputSchema must be an object schema, got {schema!r}")
    return f"{len(tools)} tool(s): {', '.join(sorted(map(str, by_name)))}"


def check_tools_call(client: WireClient) -> str:
    """tools/call echo returns exactly the text sent."""
    text = f"verify-{secrets.token_hex(8)}"
    result = client.result("tools/call", {"name": "echo", "arguments": {"text": text}})
    if result.get("isError"):
        raise CheckFailed(f"tools/call echo: isError is true: {result}")
    content = result.get("content")
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        raise CheckFailed(f"tools/call echo: content must be a non-empty list, got {content!r}")
    first = content[0]
    if first.get("type") != "text" or first.get("text") != text:
        raise CheckFailed(f"tools/call echo: expected text {text!r}, got {first!r}")
    return "echo returned the text sent"


def check_invalid_arguments(client: WireClient) -> str:
    """Wrong arguments are a tool error (isError), not a protocol error."""
    result = client.result("tools/call", {"name": "echo", "arguments": {"text": 42}})
    if result.get("isError") is not True:
        raise CheckFailed(f"tools/call with a number for text: expected isError true, got {result!r}")
    return "isError true"


def _expect_error(client: WireClient, method: str, params: dict[str, object] | None, code: int) -> str:
    message = client.request(method, params)
    error = message.get("error")
    if not isinstance(error, dict) or error.get("code") != code:
        raise CheckFailed(f"{method}: expected error code {code}, got {message}")
    if not error.get("message"):
        raise CheckFailed(f"{method}: error {code} must carry a message")
    return f"error {code}: {error['message'][:60]}"


def check_unknown_method(client: WireClient) -> str:
    """An unknown method is -32601."""
    return _expect_error(client, "verify/no-such-method", None, -32601)


def check_unknown_tool(client: WireClient) -> str:
    """An unknown tool is -32602."""
    return _expect_error(client, "tools/call", {"name": "no-such-tool-verify", "arguments": {}}, -32602)


def check_parse_error(client: WireClient) -> str:
    """A body that is not JSON is -32700 with HTTP 400."""
    response = client.post(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    message = json_body(response, "malformed JSON")
    code = (message.get("error") or {}).get("code")
    if response.status_code != 400 or code != -32700:
        raise CheckFailed(f"malformed JSON: expected HTTP 400 with -32700, got {response.status_code} with {code}")
    return "HTTP 400, -32700"


CHECKS: tuple[tuple[str, Callable[[WireClient], str]], ...] = (
    ("mcp.initialize", check_initialize),
    ("mcp.version_negotiation", check_version_negotiation),
    ("mcp.session_issued", check_session_issued),
    ("mcp.session_required", check_session_required),
    ("mcp.unknown_session", check_unknown_session),
    ("mcp.initialized_notification", check_initialized_notification),
    ("mcp.ping", check_ping),
    ("mcp.tools_list", check_tools_list),
    ("mcp.resources_list", _listing("resources/list", "resources")),
    ("mcp.prompts_list", _listing("prompts/list", "prompts")),
    ("mcp.sse_response", check_sse_response),
    ("mcp.tools_call", check_tools_call),
    ("mcp.tools_call_invalid_arguments", check_invalid_arguments),
    ("mcp.unknown_method", check_unknown_method),
    ("mcp.unknown_tool", check_unknown_tool),
    ("mcp.parse_error", check_parse_error),
    ("mcp.session_delete", check_session_delete),
    ("mcp.server_discover", check_server_discover),
)
