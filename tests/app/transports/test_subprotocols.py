"""Reading a WebSocket upgrade's subprotocols by Kubernetes' rules (``ProtocolAuthenticator``): every header split on
``,`` and trimmed, one bearer value at most, base64url without padding decoding to UTF-8, another subprotocol next
to it. The server end to end is in test_websocket_credentials.py."""

from __future__ import annotations

import base64

import pytest

from app.transports.subprotocols import BadCredential, BadOffer, Offer, admission_headers, read_offer

PREFIX = "base64url.bearer.authorization.k8s.io."  # pinned here: the wire name clients write


def bearer(credential: str) -> str:
    return PREFIX + base64.urlsafe_b64encode(credential.encode()).rstrip(b"=").decode()


def test_the_bearer_value_is_taken_out_of_every_header_and_decoded() -> None:
    offer = read_offer([f" graphql-ws ,  {bearer('k-é?>~')} ", "mcp"], "mcp")
    assert offer == Offer(("graphql-ws", "mcp"), "k-é?>~")


def test_without_a_bearer_value_the_offer_carries_no_credential() -> None:
    assert read_offer(["mcp"], "mcp") == Offer(("mcp",), None)


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ([f"mcp, {bearer('a')}", bearer("b")], "two bearer subprotocols"),
        ([PREFIX + "YWJj=", "mcp"], "not base64url"),  # padding
        ([PREFIX + "YW/j", "mcp"], "not base64url"),  # the standard alphabet
        ([PREFIX + "YWJjZ", "mcp"], "not base64url"),  # 4n+1 characters: no whole byte
        ([PREFIX + "__79", "mcp"], "not UTF-8"),
        ([PREFIX, "mcp"], "carries no credential"),
    ],
)
def test_a_bearer_value_kubernetes_refuses_is_refused(headers: list[str], said: str) -> None:
    with pytest.raises(BadCredential, match=said):
        read_offer(headers, "mcp")


def test_a_bearer_value_needs_mcp_next_to_it() -> None:
    with pytest.raises(BadOffer, match="offer the mcp subprotocol alongside the bearer one"):
        read_offer([bearer("a"), "graphql-ws"], "mcp")


def test_without_mcp_the_offer_is_refused_with_or_without_a_credential() -> None:
    with pytest.raises(BadOffer, match=r"offer the mcp subprotocol \(Sec-WebSocket-Protocol: mcp\)"):
        read_offer(["graphql-ws"], "mcp")


def test_the_credential_becomes_an_authorization_header() -> None:
    headers = {"host": "127.0.0.1", "origin": "http://localhost"}
    admitted = admission_headers(headers, Offer(("mcp",), "the-key"))
    assert admitted == {**headers, "authorization": "Bearer the-key"}
    assert admission_headers(headers, Offer(("mcp",))) is headers


@pytest.mark.parametrize("name", ["Authorization", "authorization", "X-API-Key", "x-api-key"])
def test_a_credential_in_a_header_too_is_refused(name: str) -> None:
    with pytest.raises(BadCredential, match="send one credential"):
        admission_headers({name: "Bearer another"}, Offer(("mcp",), "the-key"))
