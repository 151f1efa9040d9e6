from __future__ import annotations

import pytest

from app.protocol.request_state import RequestStateError, RequestStateSealer

KEY = b"k" * 32


def test_a_sealed_state_opens_to_the_same_text_for_the_same_scope() -> None:
    sealer = RequestStateSealer(KEY)
    assert sealer.open(sealer.seal("round-1", "tools/call\x00t"), "tools/call\x00t") == "round-1"


def test_the_state_is_not_readable_by_the_client_in_clear_or_changeable() -> None:
    sealer = RequestStateSealer(KEY)
    token = sealer.seal("secret-plan", "s")
    assert "secret-plan" not in token
    with pytest.raises(RequestStateError):
        sealer.open(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], "s")


@pytest.mark.parametrize("token", ["", "no-dot", "a.b", "!!!.???", ".", "eyJzIjoxfQ.AAAA"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(RequestStateError):
        RequestStateSealer(KEY).open(token, "s")


def test_a_state_for_another_scope_or_key_is_refused() -> None:
    token = RequestStateSealer(KEY).seal("x", "tools/call\x00a")
    with pytest.raises(RequestStateError):
        RequestStateSealer(KEY).open(token, "tools/call\x00b")
    with pytest.raises(RequestStateError):
        RequestStateSealer(b"z" * 32).open(token, "tools/call\x00a")


def test_an_expired_state_is_refused() -> None:
    now = [1000.0]
    sealer = RequestStateSealer(KEY, ttl_seconds=10, clock=lambda: now[0])
    token = sealer.seal("x", "s")
    now[0] += 11
    with pytest.raises(RequestStateError, match="expired"):
        sealer.open(token, "s")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        RequestStateSealer(b"short")
