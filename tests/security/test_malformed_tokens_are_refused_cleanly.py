"""Finding 8: JWT edge cases. A bearer token of any odd shape (a list-valued ``kid``, an RS256 token naming an EC
key, a header that is not an object, ``alg: none``, a huge ``kid``, bytes that are not base64) is a 401
``invalid_token`` with ``WWW-Authenticate`` as every other refusal, and the log says so in a short line: no
traceback, no piece of the token. A token's ``scope`` grants exactly what it names: an empty ``scope`` grants no
tool, a ``scope`` that is not a string is refused, and ``scp`` (a list of strings, or a space-separated string)
stands in for a missing ``scope``.

A real server as the chart ships it, with tokens from a JWKS served by a real local HTTP server (an RSA key and an
EC key), every request through ``/mcp``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.jwks import ISSUER, RESOURCE, Jwks, SigningKey, claims, ec_key, rsa_key
from tests.security.conftest import ChartServer, serve_as_chart
from tests.stateless import post

pytestmark = pytest.mark.slow

METADATA = f'resource_metadata="{RESOURCE}/.well-known/oauth-protected-resource"'
EVERY_TOOL = {"echo", "add", "subtract", "multiply", "divide", "power", "sqrt", "system_info"}


def b64(data: bytes | str) -> str:
    return base64.urlsafe_b64encode(data.encode() if isinstance(data, str) else data).rstrip(b"=").decode()


def hand_made(header: Any, payload: Any, signature: str = "c2lnbmF0dXJlLWJ5dGVz") -> str:
    """A token put together by hand: any header and payload, JSON-encoded, and a signature that verifies nothing."""
    return f"{b64(json.dumps(header))}.{b64(json.dumps(payload))}.{signature}"


def signed(header: dict[str, Any], payload: Any, key: SigningKey) -> str:
    """A token with any header and payload, truly signed RS256 by ``key`` (PyJWT would refuse to make some)."""
    assert isinstance(key, rsa.RSAPrivateKey)  # RS256 signs with an RSA key
    signing_input = f"{b64(json.dumps({'typ': 'JWT', 'alg': 'RS256', **header}))}.{b64(json.dumps(payload))}"
    signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    with Jwks({"rsa-1": rsa_key(), "ec-1": ec_key()}) as provider:
        yield provider


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, jwks: Jwks) -> Iterator[ChartServer]:
    running = serve_as_chart(tmp_path_factory, "tokens", args=jwks.server_args())
    yield running
    running.stop()


def rsa_token(jwks: Jwks, header: dict[str, Any] | None = None, **changes: Any) -> str:
    return signed({"kid": "rsa-1", **(header or {})}, claims(**changes), jwks.keys["rsa-1"])


def ec_token(jwks: Jwks, **changes: Any) -> str:
    return jwks.token("ec-1", **changes)


def call(server: ChartServer, token: str, method: str, params: dict[str, Any]) -> tuple[httpx.Response, str]:
    """One stateless request with ``token`` and a request id of its own; the id names the request's log lines."""
    request_id = uuid.uuid4().hex
    with httpx.Client(headers={"X-Request-ID": request_id}, timeout=20) as client:
        return post(server.mcp, method, params, key=token, client=client), request_id


def lines_of(server: ChartServer, request_id: str) -> list[str]:
    """The raw log lines the server wrote for one request (named by its X-Request-ID)."""
    deadline = time.monotonic() + 10
    while True:  # the access line is written as the answer leaves: wait for it
        found = [line for line in server.log_text().splitlines() if request_id in line]
        if any('"message":"request"' in line for line in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def listed(server: ChartServer, token: str) -> set[str]:
    response, _ = call(server, token, "tools/list", {})
    assert response.status_code == 200, response.text
    return {tool["name"] for tool in response.json()["result"]["tools"]}


def called(server: ChartServer, token: str, tool: str = "echo") -> int:
    arguments = {"text": "hi"} if tool == "echo" else {"a": 1, "b": 2}
    response, _ = call(server, token, "tools/call", {"name": tool, "arguments": arguments})
    return response.status_code


MALFORMED: dict[str, Any] = {
    "a kid that is a list": lambda k: rsa_token(k, {"kid": ["rsa-1", "ec-1"]}),
    "a kid that is an object": lambda k: rsa_token(k, {"kid": {"id": "rsa-1"}}),
    "a kid that is a number": lambda k: rsa_token(k, {"kid": 7}),
    "a huge kid": lambda k: rsa_token(k, {"kid": "k" * 6000}),
    "an RS256 token naming the EC key": lambda k: jwt.encode(claims(), k.keys["rsa-1"], "RS256", {"kid": "ec-1"}),
    "an ES256 token naming the RSA key": lambda k: jwt.encode(claims(), k.keys["ec-1"], "ES256", {"kid": "rsa-1"}),
    "alg none": lambda k: hand_made({"alg": "none", "kid": "rsa-1"}, claims()),
    "alg HS256": lambda k: jwt.encode(claims(), "an-hmac-secret-0123456789abcdefgh", "HS256", {"kid": "rsa-1"}),
    "alg that is not ASCII": lambda k: hand_made({"alg": "RS256\u00e9\u4e2d", "kid": "rsa-1"}, claims()),
    "a kid with a line break": lambda k: rsa_token(k, {"kid": "rsa-1\r\nX-Injected: yes"}),
    "an unknown crit extension": lambda k: rsa_token(k, {"crit": ["exp-by-magic"], "exp-by-magic": True}),
    "b64 false with a payload": lambda k: rsa_token(k, {"b64": False, "crit": ["b64"]}),
    "alg that is a list": lambda k: hand_made({"alg": ["RS256"], "kid": "rsa-1"}, claims()),
    "a header that is a list": lambda k: hand_made(["RS256", "rsa-1"], claims()),
    "a header that is a string": lambda k: hand_made("RS256", claims()),
    "a header that is not JSON": lambda k: f"{b64('not json at all')}.{b64(json.dumps(claims()))}.c2ln",
    "parts that are not base64": lambda k: "eyJ!!!not*base64.@@@payload###.$$$signature%%%",
    "a payload that is a list (signed)": lambda k: signed({"kid": "rsa-1"}, [claims()], k.keys["rsa-1"]),
    "a payload that is a JSON string (signed)": lambda k: signed({"kid": "rsa-1"}, "{not: json", k.keys["rsa-1"]),
    "an exp that is not a number": lambda k: rsa_token(k, exp="tomorrow"),
    "an iss that is a list": lambda k: rsa_token(k, iss=[ISSUER]),
    "a sub that is an object": lambda k: rsa_token(k, sub={"name": "alice"}),
    "a signature from another key": lambda k: signed({"kid": "rsa-1"}, claims(), rsa_key()),
}


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_a_malformed_token_is_401_invalid_token_with_a_short_log_line(
    server: ChartServer, jwks: Jwks, shape: str
) -> None:
    token = MALFORMED[shape](jwks)
    response, request_id = call(server, token, "tools/list", {})

    assert response.status_code == 401, (shape, response.status_code, response.text)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="erlmcp"'), challenge
    assert METADATA in challenge, challenge
    assert 'error="invalid_token"' in challenge, challenge
    assert len(challenge) < 512, f"the challenge echoes the token: {len(challenge)} bytes"
    lines = lines_of(server, request_id)
    assert lines, "the request left no line in the log"
    fragments = {part[:24] for part in token.split(".") if len(part) >= 24} | {part[-24:] for part in token.split(".")
                                                                              if len(part) >= 24}  # fmt: skip
    for line in lines:
        assert len(line) < 1500, f"a {len(line)}-byte log line for a refused token: {line[:300]}..."
        assert "Traceback" not in line, line[:600]
        assert '"exception"' not in line, line[:600]
        assert '"severity":"ERROR"' not in line, line[:600]
        leaked = [fragment for fragment in fragments if fragment in line]
        assert not leaked, f"the log holds pieces of the token {leaked}: {line[:600]}"


def test_an_empty_scope_grants_no_tool(server: ChartServer, jwks: Jwks) -> None:
    token = rsa_token(jwks, scope="")
    assert listed(server, token) == set()
    assert called(server, token) == 403


@pytest.mark.parametrize("scope", [["tools:echo"], 7, {"tools:echo": True}, None],
                         ids=["list", "number", "object", "null"])  # fmt: skip
def test_a_scope_that_is_not_a_string_is_refused(server: ChartServer, jwks: Jwks, scope: Any) -> None:
    token = signed({"kid": "rsa-1"}, {**claims(), "scope": scope}, jwks.keys["rsa-1"])
    response, _ = call(server, token, "tools/list", {})
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge, challenge
    assert "scope" in challenge, challenge


def test_a_scope_string_grants_the_tools_it_names_and_no_other(server: ChartServer, jwks: Jwks) -> None:
    token = ec_token(jwks, scope="openid tools:echo")
    assert listed(server, token) == {"echo"}
    assert (called(server, token, "echo"), called(server, token, "add")) == (200, 403)


@pytest.mark.parametrize("scp", [["openid", "tools:echo"], "openid tools:echo"], ids=["list", "string"])
def test_scp_stands_in_for_a_missing_scope(server: ChartServer, jwks: Jwks, scp: Any) -> None:
    token = rsa_token(jwks, scp=scp)
    assert listed(server, token) == {"echo"}
    assert (called(server, token, "echo"), called(server, token, "add")) == (200, 403)


def test_an_empty_scp_grants_no_tool_and_a_bad_one_is_refused(server: ChartServer, jwks: Jwks) -> None:
    assert listed(server, rsa_token(jwks, scp=[])) == set()
    response, _ = call(server, rsa_token(jwks, scp=["tools:echo", 7]), "tools/list", {})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_scope_wins_over_scp_when_a_token_has_both(server: ChartServer, jwks: Jwks) -> None:
    assert listed(server, rsa_token(jwks, scope="tools:add", scp=["tools:echo"])) == {"add"}


def test_a_token_without_any_scope_claim_may_use_every_tool_as_documented(server: ChartServer, jwks: Jwks) -> None:
    token = rsa_token(jwks)
    assert listed(server, token) >= EVERY_TOOL
    assert (called(server, token, "echo"), called(server, token, "add")) == (200, 200)


def test_the_server_still_answers_after_every_malformed_token(server: ChartServer, jwks: Jwks) -> None:
    assert server.running.process.poll() is None
    assert listed(server, ec_token(jwks, scope="tools:echo")) == {"echo"}
