"""A WebSocket client that cannot set headers (a browser, the TS SDK's ``WebSocketClientTransport``) authenticates
with the Kubernetes bearer subprotocol: ``base64url.bearer.authorization.k8s.io.<base64url of the credential,
unpadded>`` offered next to ``mcp``. The credential is an API key or a JWT, as after ``Authorization: Bearer``; the
server answers with ``mcp`` alone, so the credential never comes back, and the log never holds it.

A real server as the chart ships it, with a JWKS on a real loopback HTTP server, logging at DEBUG (the most a
deployment logs: the WebSocket handshake's request headers are among its lines), and a real WebSocket client.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, NegotiationError
from websockets.typing import Subprotocol

from app.jsonrpc import INVALID_REQUEST
from tests.doors import TIMEOUT, WebSocketPeer
from tests.jwks import Jwks, ec_key
from tests.security.conftest import KEYS, ChartServer, serve_as_chart

pytestmark = pytest.mark.slow

# Wire names, pinned here rather than imported from the server's modules.
PREFIX = "base64url.bearer.authorization.k8s.io."
MCP = "mcp"
WRONG_KEY = "wrong-key-0123456789abcdef"


def b64url(data: str | bytes) -> str:
    """base64url without padding, as Kubernetes' clients encode the token (Go's ``base64.RawURLEncoding``)."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def bearer(credential: str | bytes) -> str:
    return PREFIX + b64url(credential)


@pytest.fixture(scope="module")
def jwks() -> Iterator[Jwks]:
    with Jwks({"ec-1": ec_key()}) as provider:
        yield provider


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, jwks: Jwks) -> Iterator[ChartServer]:
    env = {"ERLMCP_LOG_LEVEL": "DEBUG"}
    running = serve_as_chart(tmp_path_factory, "ws-credentials", args=jwks.server_args(), env=env)
    yield running
    running.stop()


def token_of(jwks: Jwks, subject: str) -> str:
    return jwks.token("ec-1", sub=subject, scope="tools:echo")


def upgrade(
    server: ChartServer, subprotocols: Sequence[str], headers: Sequence[tuple[str, str]] = ()
) -> tuple[list[str], set[str]]:
    """Connect with ``subprotocols`` (and ``headers``), then initialize and list the tools: the response's
    ``Sec-WebSocket-Protocol`` values and the names of the tools the connection's caller may use."""

    async def scenario() -> tuple[list[str], set[str]]:
        async with connect(f"ws://127.0.0.1:{server.port}/ws", subprotocols=[Subprotocol(p) for p in subprotocols],
                           additional_headers=list(headers), open_timeout=TIMEOUT) as websocket:  # fmt: skip
            assert websocket.response is not None  # the handshake's response, once connected
            echoed = websocket.response.headers.get_all("Sec-WebSocket-Protocol")
            tools = await listed(websocket)
        return echoed, tools

    return asyncio.run(scenario())


async def listed(websocket: ClientConnection) -> set[str]:
    peer = WebSocketPeer("websocket-handshake", None, websocket)
    opened = await peer.ask(peer.initialize_request(0))
    assert "result" in opened, opened
    answer = await peer.ask(peer.request(1, "tools/list"))
    assert "result" in answer, answer
    return {tool["name"] for tool in answer["result"]["tools"]}


def refusal(
    server: ChartServer, subprotocols: Sequence[str], headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, dict[str, str], bytes]:
    """The refused upgrade's status, headers and body. The subprotocols go in one ``Sec-WebSocket-Protocol``
    header written by hand (the client library would refuse to send a malformed one)."""
    offered = [("Sec-WebSocket-Protocol", ", ".join(subprotocols))] if subprotocols else []

    async def scenario() -> tuple[int, dict[str, str], bytes]:
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers=[*offered, *headers],
                               open_timeout=TIMEOUT):  # fmt: skip
                pass
        except NegotiationError:  # a 101 with a subprotocol the library did not offer (the header was written by hand)
            pass
        except InvalidStatus as refused:
            response = refused.response
            return response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}, bytes(response.body)
        raise AssertionError(f"the upgrade with {subprotocols} {headers} was accepted")

    return asyncio.run(scenario())


def error_of(body: bytes) -> dict[str, Any]:
    """The JSON-RPC error of a refusal's body."""
    answer = orjson.loads(body)
    assert answer["id"] is None
    return dict(answer["error"])


def test_the_key_as_the_bearer_subprotocol_authenticates_and_only_mcp_comes_back(server: ChartServer) -> None:
    echoed, tools = upgrade(server, [MCP, bearer(server.key("limited"))])
    assert echoed == [MCP]
    assert tools == {"echo"}  # the caller is the key named "limited": its scopes hold


def test_the_bearer_subprotocol_may_come_first(server: ChartServer) -> None:
    echoed, tools = upgrade(server, [bearer(server.key("admin")), MCP])
    assert echoed == [MCP]
    assert {"echo", "add", "system_info"} <= tools


def test_a_jwt_as_the_bearer_subprotocol_authenticates(server: ChartServer, jwks: Jwks) -> None:
    echoed, tools = upgrade(server, [MCP, bearer(token_of(jwks, "carol"))])
    assert echoed == [MCP]
    assert tools == {"echo"}  # the token's scope


def test_the_key_in_the_authorization_header_still_authenticates(server: ChartServer) -> None:
    echoed, tools = upgrade(server, [MCP], [("Authorization", f"Bearer {server.key('limited')}")])
    assert echoed == [MCP]
    assert tools == {"echo"}


@pytest.mark.parametrize(
    ("subprotocols", "said"),
    [
        ([MCP], "Authorization: Bearer"),  # no credential at all: what to send
        ([MCP, bearer(WRONG_KEY)], "not an API key or a bearer token"),
    ],
    ids=["no-credential", "a-wrong-key"],
)
def test_a_missing_or_wrong_credential_is_refused_401_saying_so(
    server: ChartServer, subprotocols: list[str], said: str
) -> None:
    status, headers, body = refusal(server, subprotocols)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    error = error_of(body)
    assert error["code"] == INVALID_REQUEST
    assert error["message"].startswith("Unauthorized")
    assert said in error["message"]


ADMIN_KEY = KEYS["admin"][1]
# (the Sec-WebSocket-Protocol values, other headers, what the refusal says)
MALFORMED: dict[str, tuple[list[str], list[tuple[str, str]], str]] = {
    "two bearer values": ([MCP, bearer(ADMIN_KEY), bearer(WRONG_KEY)], [], "two bearer subprotocols"),
    "two bearer values in two headers": (
        [MCP, bearer(ADMIN_KEY)],
        [("Sec-WebSocket-Protocol", bearer(WRONG_KEY))],
        "two bearer subprotocols",
    ),
    "the bearer value alone": ([bearer(ADMIN_KEY)], [], "offer the mcp subprotocol alongside the bearer one"),
    "the bearer value with another subprotocol but not mcp": (
        ["graphql-ws", bearer(ADMIN_KEY)],
        [],
        "offer the mcp subprotocol alongside the bearer one",
    ),
    "standard base64 (+), not base64url": ([MCP, PREFIX + "YWRt+aW4ta2V5"], [], "not base64url"),
    "an impossible length": ([MCP, PREFIX + "YWRtaW4ta2V5L"], [], "not base64url"),
    "bytes that are not UTF-8": ([MCP, bearer(b"\xff\xfe-key-0123456789abcdef")], [], "not UTF-8"),
    "an empty token": ([MCP, PREFIX], [], "carries no credential"),
    "an Authorization header too": (
        [MCP, bearer(ADMIN_KEY)],
        [("Authorization", f"Bearer {ADMIN_KEY}")],
        "one credential",
    ),
    "an X-API-Key header too": ([MCP, bearer(ADMIN_KEY)], [("X-API-Key", ADMIN_KEY)], "one credential"),
}


@pytest.mark.parametrize("shape", list(MALFORMED))
def test_a_malformed_or_ambiguous_bearer_subprotocol_is_refused_400_saying_what_is_wrong(
    server: ChartServer, shape: str
) -> None:
    subprotocols, headers, said = MALFORMED[shape]
    status, _, body = refusal(server, subprotocols, headers)
    assert status == 400, (shape, body)
    error = error_of(body)
    assert error["code"] == INVALID_REQUEST
    assert said in error["message"], error
    encoded = [value.removeprefix(PREFIX) for value in subprotocols if value.startswith(PREFIX) and value != PREFIX]
    assert not [credential for credential in encoded if credential in error["message"]]  # it quotes no credential


@pytest.mark.parametrize("value", [bearer(ADMIN_KEY) + "==", PREFIX + "YWRt/aW4ta2V5"], ids=["padding", "slash"])
def test_a_bearer_value_that_is_no_http_token_is_refused_400_before_the_server_reads_it(
    server: ChartServer, value: str
) -> None:
    status, _, _ = refusal(server, [MCP, value])  # "=" and "/" cannot be in a subprotocol (RFC 6455, RFC 7230)
    assert status == 400


def test_without_the_mcp_subprotocol_the_upgrade_is_refused_saying_so(server: ChartServer) -> None:
    status, _, body = refusal(server, ["graphql-ws"], [("Authorization", f"Bearer {ADMIN_KEY}")])
    assert status == 400
    assert "offer the mcp subprotocol" in error_of(body)["message"]


def test_a_foreign_origin_is_refused_with_the_bearer_subprotocol_too(server: ChartServer) -> None:
    status, _, body = refusal(server, [MCP, bearer(ADMIN_KEY)], [("Origin", "http://evil.example")])
    assert status == 403
    assert "Origin" in error_of(body)["message"]


def test_the_credential_never_reaches_the_log(server: ChartServer, jwks: Jwks) -> None:
    token = token_of(jwks, "dave")
    upgrade(server, [MCP, bearer(server.key("other"))])
    upgrade(server, [MCP, bearer(token)])
    refusal(server, [MCP, bearer(WRONG_KEY)])
    refusal(server, [bearer(server.key("other"))])  # refused before the credential is looked at
    refusal(server, [MCP, bearer(server.key("other")) + "=="])  # refused by the WebSocket layer, which logs why

    log = server.log_text()
    assert "sec-websocket-protocol" in log.lower(), "the handshake's headers were not logged: the test shows nothing"
    for credential in (server.key("other"), token, WRONG_KEY):
        assert b64url(credential) not in log
        assert credential not in log
    assert f"{PREFIX}[redacted]" in log  # the line is there, the credential is not
