"""JWT bearer tokens end to end: keys minted here, a JWKS served over real HTTP, the server's answers checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.testclient import TestClient

from app.catalog import load_catalog
from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import create_app
from tests.jwks import ISSUER, RESOURCE, Jwks, ec_key, rsa_key

INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
PING = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT}


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    with Jwks({"k1": rsa_key()}) as provider:
        yield provider


@pytest.fixture
def client(jwks: Jwks) -> Iterator[TestClient]:
    settings = Settings(jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, resource_url=RESOURCE,
                        authorization_servers=[ISSUER], jwks_min_refresh_seconds=0)  # fmt: skip
    with TestClient(create_app(settings, metrics=Metrics("test")), base_url="http://127.0.0.1") as test_client:
        yield test_client


def call(client: TestClient, token: str | None) -> Any:
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/mcp", json=PING, headers=headers)


FORGED_CLAIMS = {"iss": ISSUER, "aud": RESOURCE, "sub": "mallory"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_the_public_key(jwks: Jwks) -> str:
    """The classic confusion attack: HMAC keyed with the issuer's public key, which anyone can fetch."""
    public = jwks.keys["k1"].public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = b64(
        json.dumps({"iss": ISSUER, "aud": RESOURCE, "sub": "mallory", "exp": int(time.time()) + 300}).encode()
    )
    signature = b64(hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    return f"{header}.{payload}.{signature}"


def unsigned(jwks: Jwks) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(
        json.dumps({"iss": ISSUER, "aud": RESOURCE, "sub": "mallory", "exp": int(time.time()) + 300}).encode()
    )
    return f"{header}.{payload}."


@pytest.mark.parametrize(
    ("case", "status", "said"),
    [
        ("valid", 200, None),
        ("expired", 401, "has expired"),
        ("no_exp", 401, "no 'exp' claim"),
        ("nbf_ahead", 401, "not valid yet"),
        ("wrong_iss", 401, "issuer is not"),
        ("wrong_aud", 401, "not meant for this server"),
        ("no_aud", 401, "no 'aud' claim"),
        ("alg_none", 401, "the credential sent is not a bearer token"),
        ("hs256_public_key", 401, "algorithm 'HS256' is not accepted"),
        ("unknown_kid", 401, "key id 'k9' is not in the issuer's key set"),
        ("no_token", 401, "send a bearer token"),
    ],
)
def test_each_kind_of_token_gets_the_right_answer(
    client: TestClient, jwks: Jwks, case: str, status: int, said: str | None
) -> None:
    now = int(time.time())
    makers: dict[str, Callable[[], str | None]] = {
        "valid": lambda: jwks.token(),
        "expired": lambda: jwks.token(exp=now - 120),  # beyond the 30 s leeway
        "no_exp": lambda: jwks.token(exp=None),
        "nbf_ahead": lambda: jwks.token(nbf=now + 600),
        "wrong_iss": lambda: jwks.token(iss="https://elsewhere.test"),
        "wrong_aud": lambda: jwks.token(aud="https://another-server.test"),
        "no_aud": lambda: jwks.token(aud=None),
        "alg_none": lambda: unsigned(jwks),
        "hs256_public_key": lambda: hs256_with_the_public_key(jwks),
        "unknown_kid": lambda: jwt.encode(
            {"iss": ISSUER, "aud": RESOURCE, "exp": now + 300},
            jwks.keys["k1"],
            algorithm="RS256",
            headers={"kid": "k9"},
        ),  # fmt: skip
        "no_token": lambda: None,
    }
    token = makers[case]()
    response = call(client, token)
    assert response.status_code == status, response.text
    if said is not None:
        assert said in response.json()["error"]["message"]
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="erlmcp"')
        assert f'resource_metadata="{RESOURCE}/.well-known/oauth-protected-resource"' in challenge
        assert ('error="invalid_token"' in challenge) == (case != "no_token")


def test_a_rotated_key_is_fetched_when_a_token_names_it(client: TestClient, jwks: Jwks) -> None:
    assert call(client, jwks.token()).status_code == 200
    jwks.keys["k2"] = rsa_key()
    before = jwks.fetches
    assert call(client, jwks.token(kid="k2")).status_code == 200
    assert jwks.fetches == before + 1


def test_with_the_jwks_down_known_keys_still_work_and_unknown_ones_are_503(jwks: Jwks) -> None:
    settings = Settings(jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, resource_url=RESOURCE, jwks_min_refresh_seconds=0)
    with TestClient(create_app(settings, metrics=Metrics("test")), base_url="http://127.0.0.1") as fresh:
        jwks.up = False
        down = call(fresh, jwks.token())
        assert down.status_code == 503  # no key known yet and none can be fetched: cannot check, not "invalid"
        assert down.headers["retry-after"] == "30"
        jwks.up = True
        assert call(fresh, jwks.token()).status_code == 200
        jwks.up = False
        assert call(fresh, jwks.token()).status_code == 200  # the cached key still verifies


def test_unknown_key_ids_cannot_make_the_server_hammer_the_jwks(jwks: Jwks) -> None:
    settings = Settings(jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, resource_url=RESOURCE, jwks_min_refresh_seconds=60)
    with TestClient(create_app(settings, metrics=Metrics("test")), base_url="http://127.0.0.1") as limited:
        assert call(limited, jwks.token()).status_code == 200
        fetched = jwks.fetches
        forged = jwt.encode({"iss": ISSUER, "aud": RESOURCE, "exp": int(time.time()) + 300}, jwks.keys["k1"],
                            algorithm="RS256", headers={"kid": "nope"})  # fmt: skip
        for _ in range(20):
            assert call(limited, forged).status_code == 401
        assert jwks.fetches == fetched  # the last fetch was less than 60 s ago: unknown key ids fetch nothing


def test_the_protected_resource_metadata_names_the_resource_and_its_issuer(client: TestClient) -> None:
    metadata = client.get("/.well-known/oauth-protected-resource").json()
    assert metadata["resource"] == RESOURCE
    assert metadata["authorization_servers"] == [ISSUER]
    assert metadata["bearer_methods_supported"] == ["header"]


def test_a_public_key_file_works_without_a_jwks(tmp_path: Path) -> None:
    key = ec_key()
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    settings = Settings(jwt_public_key_file=pem, jwt_issuer=ISSUER, jwt_audience=RESOURCE)
    with TestClient(create_app(settings, metrics=Metrics("test")), base_url="http://127.0.0.1") as keyed:
        good = jwt.encode({"iss": ISSUER, "aud": RESOURCE, "sub": "bob", "exp": int(time.time()) + 60}, key,
                          algorithm="ES256")  # fmt: skip
        assert call(keyed, good).status_code == 200
        other = ec_key()
        forged = jwt.encode({"iss": ISSUER, "aud": RESOURCE, "exp": int(time.time()) + 60}, other, algorithm="ES256")
        assert call(keyed, forged).status_code == 401


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jwt_jwks_url": "http://idp.example/jwks", "jwt_issuer": ISSUER, "resource_url": RESOURCE}, "must be https"),
        ({"jwt_jwks_url": "https://idp.example/jwks", "resource_url": RESOURCE}, "jwt_issuer"),
        ({"jwt_jwks_url": "https://idp.example/jwks", "jwt_issuer": ISSUER}, "audience"),
        (
            {
                "jwt_jwks_url": "https://idp.example/jwks",
                "jwt_issuer": ISSUER,
                "resource_url": RESOURCE,
                "jwt_algorithms": "RS256,HS256",
            },
            "HS256 are not allowed",
        ),  # fmt: skip
    ],
)
def test_unsafe_or_incomplete_token_settings_refuse_to_start(settings: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    from app.settings import SettingsError

    with pytest.raises((SettingsError, ValidationError), match=message):
        create_app(Settings(**settings), metrics=Metrics("test"))


def test_a_tokens_scope_claim_limits_the_tools_it_sees(client: TestClient, jwks: Jwks) -> None:
    def tools(token: str) -> list[str]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
        opened = client.post("/mcp", json=PING, headers=headers)
        headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        listed = client.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)
        return [tool["name"] for tool in listed.json()["result"]["tools"]]

    assert tools(jwks.token(scope="openid tools:echo")) == ["echo"]
    assert tools(jwks.token(scope="openid profile")) == []  # scopes given, none for a tool
    every = [tool.name for tool in load_catalog(None).tools]
    assert len(every) > 1
    assert tools(jwks.token()) == every  # no scope claim at all: every tool, as with an unscoped key
