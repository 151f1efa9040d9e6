"""Named API keys with scopes: the file format, tools a key may see and call, and rotation without a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from app.observability.metrics import Metrics
from app.security.keys import KeyFileError, digest_of, parse_key_file
from app.security.limits import LimitOverrides
from app.settings import Settings
from app.wiring import create_app

NARROW, WIDE = "narrow-key-0123456789abcdef", "wide-key-0123456789abcdef"
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}


def test_the_key_file_names_keys_gives_scopes_and_accepts_digests() -> None:
    keys = parse_key_file(
        "# comment\n"
        f"ci tools:test_simple_text,tools:echo {NARROW}\n"
        f"ops * sha256:{digest_of(WIDE)}   # a digest: the file need not hold the key\n"
        "plain-key-0123456789abcdef\n"
    )
    assert [(k.name, sorted(k.scopes)) for k in keys] == [
        ("ci", ["tools:echo", "tools:test_simple_text"]),
        ("ops", ["*"]),
        ("key-4", ["*"]),
    ]
    assert keys[1].digest == digest_of(WIDE)


def test_a_key_may_set_its_own_limits_in_a_fourth_field() -> None:
    keys = parse_key_file(
        f"agents * {NARROW} rate=50,burst=200,initialize=600,sessions=500  # a shared key behind a platform\n"
        f"batch tools:echo sha256:{digest_of(WIDE)} burst=5\n"
        f"plain * {NARROW}x\n"
    )
    agents, batch, plain = keys
    assert agents.limits == LimitOverrides(rate=50.0, burst=200, initialize=600, sessions=500)
    assert batch.limits == LimitOverrides(burst=5)  # the rest: the server's defaults
    assert batch.digest == digest_of(WIDE)
    assert plain.limits == LimitOverrides()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ci tools:echo\n", "line 1: expected KEY, or NAME SCOPES KEY \\[LIMITS\\], found 2 fields"),
        (f"ci * {NARROW} rate=5, burst=9\n", "line 1: .* found 5 fields \\(write the limits as one field"),
        (f"ci * {NARROW} rate=5,bursts=9\n", "line 1 \\(key 'ci'\\): unknown option 'bursts'"),
        (f"ok * {WIDE}\nci * {NARROW} initialize=lots\n", "line 2 \\(key 'ci'\\): initialize='lots' cannot be used"),
        (f"ci read {NARROW}\n", "scopes must be \\*, tools:\\* or tools:NAME"),
        (f"c/i * {NARROW}\n", "the name 'c/i'"),
        ("short\n", "at least 16 characters"),
        (f"a * {NARROW}\na * {WIDE}\n", "names appear more than once: a"),
    ],
)
def test_a_malformed_key_file_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        parse_key_file(text)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"narrow tools:test_simple_text {NARROW}\nwide * {WIDE}\n")
    return path


@pytest.fixture
def client(key_file: Path) -> Iterator[TestClient]:
    settings = Settings(api_key_file=key_file, catalog="conformance")
    with TestClient(create_app(settings, metrics=Metrics("test")), base_url="http://127.0.0.1") as test_client:
        yield test_client


def session(client: TestClient, key: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    opened = client.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT},
                         headers=headers)  # fmt: skip
    assert opened.status_code == 200, opened.text
    return {**headers, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}


def rpc(client: TestClient, headers: dict[str, str], method: str, params: dict[str, Any] | None = None) -> Any:
    return client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}},
                       headers=headers)  # fmt: skip


def test_a_key_sees_only_the_tools_its_scopes_allow(client: TestClient) -> None:
    narrow = rpc(client, session(client, NARROW), "tools/list").json()["result"]["tools"]
    wide = rpc(client, session(client, WIDE), "tools/list").json()["result"]["tools"]
    assert [tool["name"] for tool in narrow] == ["test_simple_text"]
    assert len(wide) > 10


def test_calling_a_tool_out_of_scope_is_403_insufficient_scope(client: TestClient) -> None:
    headers = session(client, NARROW)
    allowed = rpc(client, headers, "tools/call", {"name": "test_simple_text", "arguments": {}})
    assert allowed.status_code == 200
    assert "error" not in allowed.json()
    refused = rpc(client, headers, "tools/call", {"name": "test_image_content", "arguments": {}})
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="tools:test_image_content"' in challenge
    unknown = rpc(client, headers, "tools/call", {"name": "no_such_tool", "arguments": {}})
    assert unknown.json()["error"]["code"] == -32602  # a tool that does not exist stays an unknown tool


def test_a_key_out_of_scope_over_websocket_gets_unknown_tool(client: TestClient) -> None:
    with client.websocket_connect(
        "ws://127.0.0.1/ws", subprotocols=["mcp"], headers={"Authorization": f"Bearer {NARROW}"}
    ) as ws:
        ws.send_json({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
        ws.receive_json()
        ws.send_json({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "test_image_content", "arguments": {}}})  # fmt: skip
        answer = ws.receive_json()
    assert answer["error"]["code"] == -32602


def test_a_rotated_key_file_takes_effect_without_a_restart(client: TestClient, key_file: Path) -> None:
    assert session(client, NARROW)
    rotated = "rotated-key-0123456789abcdef"
    key_file.write_text(f"narrow tools:test_simple_text {rotated}\n")
    time.sleep(1.1)  # the file is looked at again at most once a second
    headers = {"Accept": "application/json", "Authorization": f"Bearer {NARROW}"}
    old = client.post("/mcp", json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}, headers=headers)
    assert old.status_code == 401  # revoked
    assert session(client, rotated)
    key_file.write_text("not a valid line at all\n")  # a broken file keeps the keys that worked
    time.sleep(1.1)
    assert session(client, rotated)
