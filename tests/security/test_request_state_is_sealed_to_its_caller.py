"""A 2026-07-28 ``requestState`` is encrypted, and sealed to the key, the method and the tool it was issued for.

The outside review ran the three-round tool of the conformance catalogue with the key ``admin``, answered its first
question with a name, and replayed the ``requestState`` it got back with the key ``admin2`` (the same scopes): the
server answered ``admin2`` with ``admin``'s data ("ALICE-PRIVATE likes red"). The token was also readable: base64
of the state in clear. Now another key, another tool, or a changed token is refused with a JSON-RPC error that
says so, and the token shows nothing of the state.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.security.conftest import KEYS, ChartServer, serve_as_chart
from tests.sse import response_message

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
    "io.modelcontextprotocol/clientInfo": {"name": "security-test", "version": "1"},
}
TWIN_ADMIN = {**KEYS, "admin2": ("*", "admin2-key-0123456789abcdef")}
THREE_ROUNDS = "test_input_required_result_multi_round"
ECHOES_ITS_STATE = "test_input_required_result_tampered_state"  # answers "state-ok: <its opened state>"
SECRET_NAME = "ALICE-PRIVATE"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    running = serve_as_chart(tmp_path_factory, "request-state", args=["--catalog", "conformance"], keys=TWIN_ADMIN)
    yield running
    running.stop()


def call_tool(server: ChartServer, key: str, name: str, **params: Any) -> dict[str, Any]:
    """One 2026-07-28 tools/call by ``key``: its JSON-RPC response, with the HTTP status under ``"status"``."""
    headers = server.headers(key, **{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call"})
    headers["Mcp-Name"] = name
    body = {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call",
            "params": {"name": name, "arguments": {}, **params, "_meta": META}}  # fmt: skip
    response = httpx.post(server.mcp, headers=headers, content=orjson.dumps(body), timeout=20)
    return {**response_message(response.headers["content-type"], response.text), "status": response.status_code}


def answer(step: str, **content: str) -> dict[str, Any]:
    return {step: {"action": "accept", "content": content}}


def admins_second_round_state(server: ChartServer) -> str:
    """``admin`` runs the three-round tool up to its last question: the requestState that holds its name."""
    first = call_tool(server, "admin", THREE_ROUNDS)["result"]
    assert first["resultType"] == "input_required", first
    second = call_tool(server, "admin", THREE_ROUNDS, requestState=first["requestState"],
                       inputResponses=answer("step1", name=SECRET_NAME))["result"]  # fmt: skip
    assert second["resultType"] == "input_required", second
    assert "step2" in second["inputRequests"]
    return str(second["requestState"])


def decoded_parts(token: str) -> bytes:
    """Every base64 (standard or URL-safe) run of the token, decoded: what a client can read of it."""
    decoded = []
    for part in re.split(r"[^A-Za-z0-9_\-+/=]", token):
        for alphabet in (base64.urlsafe_b64decode, base64.b64decode):
            for start in range(4):  # whatever the offset of the encoded text in the part
                chunk = part[start:].rstrip("=")
                try:
                    decoded.append(alphabet(chunk + "=" * (-len(chunk) % 4)))
                except (binascii.Error, ValueError):
                    continue
    return b"\x00".join(decoded)


def test_the_owner_finishes_the_three_rounds_with_its_own_state(server: ChartServer) -> None:
    state = admins_second_round_state(server)
    done = call_tool(server, "admin", THREE_ROUNDS, requestState=state, inputResponses=answer("step2", color="red"))
    assert done["result"]["content"][0]["text"] == f"{SECRET_NAME} likes red."


def test_the_token_shows_nothing_of_the_state(server: ChartServer) -> None:
    state = admins_second_round_state(server)
    readable = state.encode() + b"\x00" + decoded_parts(state)
    for word in (SECRET_NAME.encode(), b"ALICE", b"round", b'"name"'):
        assert word not in readable, f"{word!r} can be read from the requestState {state!r}"


def test_a_key_with_the_same_scopes_cannot_replay_anothers_state(server: ChartServer) -> None:
    state = admins_second_round_state(server)
    replayed = call_tool(server, "admin2", THREE_ROUNDS, requestState=state,
                         inputResponses=answer("step2", color="red"))  # fmt: skip
    assert SECRET_NAME not in orjson.dumps(replayed).decode()
    assert replayed["status"] == 400
    assert replayed["error"]["code"] == -32602
    assert "requestState" in replayed["error"]["message"]
    assert "start the request again without it" in replayed["error"]["message"]


def test_a_state_cannot_be_taken_to_another_tool(server: ChartServer) -> None:
    state = admins_second_round_state(server)
    moved = call_tool(server, "admin", ECHOES_ITS_STATE, requestState=state)
    assert SECRET_NAME not in orjson.dumps(moved).decode()
    assert moved["error"]["code"] == -32602
    assert "requestState" in moved["error"]["message"]


@pytest.mark.parametrize("change", ["flip-a-character", "drop-the-end", "append", "empty", "not-a-token"])
def test_a_changed_state_is_refused(server: ChartServer, change: str) -> None:
    state = admins_second_round_state(server)
    middle = len(state) // 2
    changed = {
        "flip-a-character": state[:middle] + ("A" if state[middle] != "A" else "B") + state[middle + 1 :],
        "drop-the-end": state[:-4],
        "append": state + "AAAA",
        "empty": "",
        "not-a-token": '{"round": 2, "name": "MALLORY"}',
    }[change]
    refused = call_tool(server, "admin", THREE_ROUNDS, requestState=changed,
                        inputResponses=answer("step2", color="red"))  # fmt: skip
    assert "result" not in refused, refused
    assert refused["error"]["code"] == -32602
    assert "requestState" in refused["error"]["message"]
