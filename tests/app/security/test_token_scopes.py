"""What a token's claims grant: ``scope`` (a string), else ``scp`` (a list of strings or a string), else every
tool; an empty one grants none, and one of another type refuses the token."""

from __future__ import annotations

from typing import Any

import pytest

from app.security.keys import ALL_TOOLS
from app.security.tokens import TokenRejected, scopes_of


@pytest.mark.parametrize(
    ("claims", "granted"),
    [
        ({}, ALL_TOOLS),
        ({"scope": ""}, frozenset()),
        ({"scope": "  "}, frozenset()),
        ({"scope": "openid tools:echo"}, frozenset({"openid", "tools:echo"})),
        ({"scp": ["openid", "tools:echo"]}, frozenset({"openid", "tools:echo"})),
        ({"scp": "tools:echo tools:add"}, frozenset({"tools:echo", "tools:add"})),
        ({"scp": []}, frozenset()),
        ({"scope": "tools:add", "scp": ["tools:echo"]}, frozenset({"tools:add"})),
    ],
)
def test_a_tokens_scope_claims_grant_what_they_name(claims: dict[str, Any], granted: frozenset[str]) -> None:
    assert scopes_of(claims) == granted


@pytest.mark.parametrize(
    "claims",
    [{"scope": ["tools:echo"]}, {"scope": None}, {"scope": 7}, {"scp": {"tools:echo": True}}, {"scp": ["a", 7]}],
)
def test_a_scope_claim_of_another_type_refuses_the_token(claims: dict[str, Any]) -> None:
    with pytest.raises(TokenRejected, match="scope|scp") as refused:
        scopes_of(claims)
    assert refused.value.status == 401
