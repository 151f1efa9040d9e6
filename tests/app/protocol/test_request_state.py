from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from typing import Any

import pytest

from app.features import Features
from app.features.tools import Tools
from app.jsonrpc import Message
from app.protocol.context import RequestContext
from app.protocol.dispatcher import Dispatcher
from app.protocol.request_state import RequestStateError, RequestStateSealer, StateBinding

KEY = b"k" * 32
ALICE = StateBinding("tools/call", "plan", "alice")


def test_a_sealed_state_opens_to_the_same_text_for_the_same_binding() -> None:
    sealer = RequestStateSealer(KEY)
    assert sealer.open(sealer.seal("round-1", ALICE), ALICE) == "round-1"
    with_session = replace(ALICE, session="s-1")
    assert sealer.open(sealer.seal("round-2", with_session), with_session) == "round-2"


def test_the_token_shows_nothing_of_the_state_and_differs_each_time() -> None:
    sealer = RequestStateSealer(KEY)
    first, second = sealer.seal("secret-plan", ALICE), sealer.seal("secret-plan", ALICE)
    assert first != second  # a random nonce each time: equal states do not show as equal tokens
    for token in (first, second):
        body = token.rsplit(".", 1)[1]
        decoded = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        assert b"secret" not in decoded
        assert "secret" not in token


def test_a_token_spelled_another_way_is_refused() -> None:
    # The last base64url character of a token carries unused bits: a decoder that ignores them reads several
    # spellings as the same bytes. Only the spelling the server sealed is its token.
    sealer = RequestStateSealer(KEY)
    token = sealer.seal("round-1", ALICE)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for character in alphabet.replace(token[-1], ""):
        with pytest.raises(RequestStateError):
            sealer.open(token[:-1] + character, ALICE)


@pytest.mark.parametrize(
    "other",
    [
        replace(ALICE, principal="bob"),
        replace(ALICE, principal=None),
        replace(ALICE, name="other-tool"),
        replace(ALICE, method="prompts/get"),
        replace(ALICE, session="s-1"),
    ],
    ids=["another principal", "no principal", "another tool", "another method", "a session"],
)
def test_a_state_for_another_binding_is_refused(other: StateBinding) -> None:
    sealer = RequestStateSealer(KEY)
    with pytest.raises(RequestStateError, match="belongs to another caller"):
        sealer.open(sealer.seal("x", ALICE), other)


def test_fields_cannot_run_into_each_other() -> None:
    sealer = RequestStateSealer(KEY)
    token = sealer.seal("x", StateBinding("tools/call", "a", "bc"))
    with pytest.raises(RequestStateError):
        sealer.open(token, StateBinding("tools/call", "ab", "c"))
    with pytest.raises(RequestStateError):
        sealer.open(sealer.seal("x", StateBinding("tools/call", "a", "-")), StateBinding("tools/call", "a", None))


def test_a_state_sealed_with_another_key_is_refused() -> None:
    token = RequestStateSealer(KEY).seal("x", ALICE)
    with pytest.raises(RequestStateError):
        RequestStateSealer(b"z" * 32).open(token, ALICE)


def test_every_changed_character_is_refused() -> None:
    sealer = RequestStateSealer(KEY)
    token = sealer.seal("round-1", ALICE)
    for index, character in enumerate(token):
        changed = token[:index] + ("A" if character != "A" else "B") + token[index + 1 :]
        with pytest.raises(RequestStateError):
            sealer.open(changed, ALICE)


@pytest.mark.parametrize(
    "token", ["", "no-dot", "a.b", "!!!.???", ".", "eyJzIjoxfQ.AAAA", "v1..", "v1.9999999999.", "v1.x.AAAA",
              "v1.9999999999.AAAA", "v1.9999999999.!!!!", "v2.9999999999." + "A" * 40]
)  # fmt: skip
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(RequestStateError, match="start the request again without it"):
        RequestStateSealer(KEY).open(token, ALICE)


def test_an_expired_state_is_refused_as_expired() -> None:
    now = [1000.0]
    sealer = RequestStateSealer(KEY, ttl_seconds=10, clock=lambda: now[0])
    token = sealer.seal("x", ALICE)
    now[0] += 11
    with pytest.raises(RequestStateError, match="expired"):
        sealer.open(token, ALICE)


def test_an_expiry_pushed_back_by_the_client_is_refused() -> None:
    now = [1000.0]
    sealer = RequestStateSealer(KEY, ttl_seconds=10, clock=lambda: now[0])
    version, expiry, body = sealer.seal("x", ALICE).split(".")
    now[0] += 11
    with pytest.raises(RequestStateError, match="belongs to another caller"):
        sealer.open(f"{version}.{int(expiry) + 3600}.{body}", ALICE)


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RequestStateSealer(b"short")


# -- the dispatcher seals to the caller and to the method's own name field --------------------------------------


def _server() -> Dispatcher:
    return Dispatcher(features=Features(tools=Tools([], timeout_seconds=5)), server_name="t", server_version="1",
                      sealer=RequestStateSealer(KEY))  # fmt: skip


def _ctx(method: str, principal: str | None) -> RequestContext:
    return RequestContext(request_id=1, method=method, stateless=True, principal=principal)


async def _dispatch(server: Dispatcher, method: str, principal: str | None, params: dict[str, Any]) -> dict[str, Any]:
    outcome = await server.dispatch_stateless(Message(method=method, id=1, params=params), _ctx(method, principal))
    return outcome.response


def test_the_dispatcher_binds_a_state_to_the_name_field_of_the_method_not_to_any_name() -> None:
    """resources/read is named by its uri: a stray "name" param must not let a state move to another resource."""
    server = _server()
    seen: list[str | None] = []

    async def reader(params: Any, ctx: RequestContext) -> dict[str, Any]:
        seen.append(ctx.request_state)
        return {"resultType": "input_required", "inputRequests": {}, "requestState": f"for {params['uri']}"}

    server._handlers["resources/read"] = reader  # a multi-round resource reader

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        first = await _dispatch(server, "resources/read", "alice", {"uri": "test://a", "name": "x"})
        state = first["result"]["requestState"]
        moved = await _dispatch(server, "resources/read", "alice",
                                {"uri": "test://b", "name": "x", "requestState": state})  # fmt: skip
        kept = await _dispatch(server, "resources/read", "alice",
                               {"uri": "test://a", "name": "y", "requestState": state})  # fmt: skip
        return first, moved, kept

    first, moved, kept = asyncio.run(scenario())
    assert first["result"]["resultType"] == "input_required"
    assert moved["error"]["code"] == -32602
    assert "requestState" in moved["error"]["message"]
    assert "result" in kept  # the state belongs to test://a, whatever else the params carry
    assert seen == [None, "for test://a"]


def test_the_dispatcher_refuses_a_state_replayed_by_another_principal() -> None:
    server = _server()

    async def asking(params: Any, ctx: RequestContext) -> dict[str, Any]:
        if ctx.request_state is not None:
            return {"content": [{"type": "text", "text": ctx.request_state}]}
        return {"resultType": "input_required", "inputRequests": {}, "requestState": "alice's secret"}

    server._handlers["tools/call"] = asking

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        first = await _dispatch(server, "tools/call", "alice", {"name": "t"})
        state = first["result"]["requestState"]
        by_bob = await _dispatch(server, "tools/call", "bob", {"name": "t", "requestState": state})
        by_alice = await _dispatch(server, "tools/call", "alice", {"name": "t", "requestState": state})
        return by_bob, by_alice

    by_bob, by_alice = asyncio.run(scenario())
    assert by_bob["error"]["code"] == -32602
    assert "secret" not in str(by_bob)
    assert by_alice["result"]["content"][0]["text"] == "alice's secret"


def test_a_sealer_made_at_start_derives_its_key_only_when_a_state_is_first_sealed_or_opened() -> None:
    # Every server makes one; few requests use it (tests/app/test_imports.py: no cryptography at start).
    sealer = RequestStateSealer(KEY)
    assert not sealer.derived
    with pytest.raises(RequestStateError):
        sealer.open("v1.1.x", ALICE)  # malformed: refused before any key is needed
    assert not sealer.derived
    token = sealer.seal("round-1", ALICE)
    assert sealer.derived
    assert RequestStateSealer(KEY).open(token, ALICE) == "round-1"  # opening derives the same key
