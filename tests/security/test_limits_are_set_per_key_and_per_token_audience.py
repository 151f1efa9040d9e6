"""Finding 11: one set of limits for every client throttled honest ones (a shared key behind an agent platform,
the official conformance suite) and could not hold a batch job tighter than the rest.

Each API key may carry its own limits in the key file (a fourth field: ``rate=50,burst=200,initialize=600,
sessions=500``), and each JWT audience in ``ERLMCP_JWT_AUDIENCE_LIMITS``; what a key or token leaves out keeps
the server's default. The limits are the request rate and burst, initialize per minute and the concurrent
sessions a principal may hold, and they are per principal: one key raised or lowered leaves the others at the
defaults. The one gate applies them on every transport (HTTP, TCP and WebSocket here), the key file's limits
change with the file while the server runs, and a malformed option is refused naming its line, at start and on
reload (where the keys in force stay).

The servers' defaults are small, so that every limit is reached in a few requests: 10 requests at once (refilled
at 0.01 a second: not during a test), 4 initialize a minute and 6 sessions per principal.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.typing import Subprotocol

from app.jsonrpc import RATE_LIMITED
from deployer.marketplace.local import free_ports
from tests.conftest import ROOT
from tests.security.conftest import ACCEPT, ChartServer, serve_as_chart

pytestmark = pytest.mark.slow

T = TypeVar("T")

TIMEOUT = 30.0  # a whole scenario; a hang fails the test rather than stalling it
DEFAULTS = {
    "ERLMCP_RATE_LIMIT_PER_SECOND": "0.01",
    "ERLMCP_RATE_LIMIT_BURST": "10",
    "ERLMCP_INITIALIZE_PER_MINUTE": "4",
    "ERLMCP_MAX_SESSIONS_PER_PRINCIPAL": "6",
}
TRANSPORTS = ["http", "tcp", "websocket"]
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "limits", "version": "1"}}
TCP_KEY_META = "io.erlmcp/apiKey"

# Each role is a key (or a token's audience) with these limits; "" keeps every default.
ROLES: dict[str, str] = {
    "init-raised": "burst=40,initialize=20,sessions=20",
    "init-default": "",
    "init-lowered": "initialize=1",
    "quota-raised": "burst=40,initialize=50,sessions=10",
    "quota-default": "burst=40,initialize=50",
    "quota-lowered": "burst=40,initialize=50,sessions=1",
    "burst-raised": "burst=40",
    "burst-unlimited": "rate=0",
    "burst-default-over": "",
    "burst-default-under": "",
    "burst-lowered": "burst=3",
}

ISSUER, AUDIENCE = "https://issuer.limits.test", "https://mcp.limits.test"


def secret(name: str) -> str:
    return f"{name}-secret-0123456789abcdef"


def key_line(name: str, options: str) -> str:
    return f"{name} * {secret(name)} {options}".rstrip() + "\n"


def every_role_key() -> str:
    return "".join(key_line(f"{role}-{t}", options) for role, options in ROLES.items() for t in TRANSPORTS)


def within(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), TIMEOUT)

    return asyncio.run(bounded())


# -- clients: one session over HTTP, TCP or WebSocket, with the same two verbs -------------------------------------


def outcome(answer: Mapping[str, Any]) -> str:
    """``ok``, or which limit refused the message (its message says which)."""
    error = answer.get("error")
    if error is None:
        return "ok"
    message = str(error.get("message", ""))
    if error.get("code") != RATE_LIMITED:
        return f"error {error.get('code')}: {message}"
    if "initialize is limited" in message:
        return "initialize limit"
    if "sessions" in message:
        return "session quota"
    if "request rate" in message or "at once" in message:
        return "rate"
    return f"rate-limited: {message}"


class Peer:
    """One client connection (or, over HTTP, one session's requests)."""

    async def initialize(self) -> str:
        raise NotImplementedError

    async def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        raise NotImplementedError


class HttpPeer(Peer):
    def __init__(self, client: httpx.AsyncClient, url: str, credential: str) -> None:
        self._client, self._url = client, url
        self._headers = {"Accept": ACCEPT, "Content-Type": "application/json", "Authorization": f"Bearer {credential}"}

    async def _post(self, message: dict[str, Any]) -> httpx.Response:
        return await self._client.post(self._url, content=orjson.dumps(message), headers=self._headers)

    async def initialize(self) -> str:
        response = await self._post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
        answer = response.json()
        if response.status_code == 200 and "mcp-session-id" in response.headers:
            self._headers |= {
                "Mcp-Session-Id": response.headers["mcp-session-id"],
                "MCP-Protocol-Version": "2025-11-25",
            }
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return outcome(answer)

    async def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self._post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        answer: dict[str, Any] = response.json()
        return answer


class LinePeer(Peer):
    """TCP: newline-delimited JSON; the credential rides in the first message's ``params._meta``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, credential: str) -> None:
        self._reader, self._writer, self._credential = reader, writer, credential
        self._presented = False

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self._presented:
            params = dict(message.get("params") or {})
            params["_meta"] = {TCP_KEY_META: self._credential}
            message = {**message, "params": params}
            self._presented = True
        self._writer.write(orjson.dumps(message) + b"\n")
        await self._writer.drain()
        if "id" not in message:
            return {}
        while True:
            line = await self._reader.readline()
            if not line:
                return {"error": {"code": 0, "message": "the server closed the connection"}}
            answer: dict[str, Any] = orjson.loads(line)
            if answer.get("id") == message["id"]:
                return answer

    async def initialize(self) -> str:
        answer = await self._exchange({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT})
        if "result" in answer:
            await self._exchange({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return outcome(answer)

    async def request(self, request_id: int, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._exchange({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})


class WebSocketPeer(LinePeer):
    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket
        self._presented = True  # the credential went in the upgrade's Authorization header

    async def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        await self._websocket.send(orjson.dumps(message).decode())
        if "id" not in message:
            return {}
        while True:
            answer: dict[str, Any] = orjson.loads(await self._websocket.recv())
            if answer.get("id") == message["id"]:
                return answer


@asynccontextmanager
async def connect(server: ChartServer, transport: str, credential: str) -> AsyncIterator[Peer]:
    if transport == "http":
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            yield HttpPeer(client, server.mcp, credential)
    elif transport == "tcp":
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        try:
            yield LinePeer(reader, writer, credential)
        finally:
            writer.close()
    else:
        assert transport == "websocket"
        url = server.url.replace("http://", "ws://") + "/ws"
        headers = {"Authorization": f"Bearer {credential}"}
        async with websocket_connect(url, subprotocols=[Subprotocol("mcp")], additional_headers=headers) as ws:
            yield WebSocketPeer(ws)


async def open_sessions(server: ChartServer, transport: str, credential: str, count: int) -> list[str]:
    """Open ``count`` sessions one after the other, each held open until all were tried: what each initialize
    got (``ok``, ``initialize limit``, ``session quota``, ``rate``)."""
    outcomes = []
    async with AsyncExitStack() as held:
        for _ in range(count):
            peer = await held.enter_async_context(connect(server, transport, credential))
            outcomes.append(await peer.initialize())
    return outcomes


async def pings_refused(server: ChartServer, transport: str, credential: str, count: int) -> int:
    """Open a session and send ``count`` pings: how many were refused for the request rate."""
    async with connect(server, transport, credential) as peer:
        assert await peer.initialize() == "ok"
        answers = [await peer.request(number, "ping") for number in range(1, count + 1)]
    return sum(outcome(answer) == "rate" for answer in answers)


# -- credentials: a key of the key file, or a token whose audience carries the same limits -------------------------


class Tokens:
    """An identity provider's signing key; the server trusts its public key."""

    def __init__(self, root: Path) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_file = root / "issuer.pem"
        self.public_key_file.write_bytes(
            self._key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, subject: str, audience: str | list[str]) -> str:
        claims = {"iss": ISSUER, "sub": subject, "aud": audience, "exp": int(time.time()) + 3600}
        return jwt.encode(claims, self._key, algorithm="ES256")


def audience_limits() -> str:
    """ERLMCP_JWT_AUDIENCE_LIMITS: each role with limits is an audience of its own."""
    return orjson.dumps({f"aud-{role}": options for role, options in ROLES.items() if options}).decode()


@pytest.fixture(scope="module")
def keys_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    """The chart's server with a key per role and transport; its key file gives each role's limits."""
    key_file = tmp_path_factory.mktemp("limit-keys") / "api-keys"
    key_file.write_text(every_role_key())
    server = serve_as_chart(tmp_path_factory, "per-key-limits", args=["--api-key-file", str(key_file)], env=DEFAULTS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return Tokens(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def tokens_server(tmp_path_factory: pytest.TempPathFactory, tokens: Tokens) -> Iterator[ChartServer]:
    """The chart's server accepting tokens too; each role with limits is an audience in ERLMCP_JWT_AUDIENCE_LIMITS."""
    args = ["--jwt-public-key-file", str(tokens.public_key_file), "--jwt-issuer", ISSUER]
    env = DEFAULTS | {"ERLMCP_JWT_AUDIENCE": AUDIENCE, "ERLMCP_JWT_AUDIENCE_LIMITS": audience_limits()}
    server = serve_as_chart(tmp_path_factory, "per-audience-limits", args=args, env=env)
    yield server
    server.stop()


KINDS = ["key", "token"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def limited(kind: str, request: pytest.FixtureRequest) -> tuple[ChartServer, Callable[[str, str], str]]:
    """The server of ``kind`` and how to make the credential of a role on a transport."""
    if kind == "key":
        return request.getfixturevalue("keys_server"), lambda role, transport: secret(f"{role}-{transport}")
    issuer: Tokens = request.getfixturevalue("tokens")

    def token(role: str, transport: str) -> str:
        # A role without limits has only the server's audience; the others one more, which names their limits.
        audience: str | list[str] = [AUDIENCE, f"aud-{role}"] if ROLES[role] else AUDIENCE
        return issuer.token(f"{role}-{transport}", audience)

    return request.getfixturevalue("tokens_server"), token


# == the limits, raised, kept and lowered per principal ============================================================


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_principal_has_its_own_initialize_limit(kind: str, transport: str, request: pytest.FixtureRequest) -> None:
    server, credential = limited(kind, request)

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        raised = await open_sessions(server, transport, credential("init-raised", transport), 12)
        default = await open_sessions(server, transport, credential("init-default", transport), 5)
        lowered = await open_sessions(server, transport, credential("init-lowered", transport), 2)
        return raised, default, lowered

    raised, default, lowered = within(scenario)
    assert raised == ["ok"] * 12  # initialize=20: past the default of 4 a minute
    assert default == ["ok"] * 4 + ["initialize limit"]  # no option: the server's 4 a minute
    assert lowered == ["ok", "initialize limit"]  # initialize=1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_principal_has_its_own_session_quota(kind: str, transport: str, request: pytest.FixtureRequest) -> None:
    server, credential = limited(kind, request)

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        raised = await open_sessions(server, transport, credential("quota-raised", transport), 8)
        default = await open_sessions(server, transport, credential("quota-default", transport), 7)
        lowered = await open_sessions(server, transport, credential("quota-lowered", transport), 2)
        return raised, default, lowered

    raised, default, lowered = within(scenario)
    assert raised == ["ok"] * 8  # sessions=10: past the default of 6
    assert default == ["ok"] * 6 + ["session quota"]
    assert lowered == ["ok", "session quota"]  # sessions=1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_principal_has_its_own_request_rate_and_burst(
    kind: str, transport: str, request: pytest.FixtureRequest
) -> None:
    server, credential = limited(kind, request)

    async def scenario() -> dict[str, int]:
        return {
            "raised": await pings_refused(server, transport, credential("burst-raised", transport), 20),
            "unlimited": await pings_refused(server, transport, credential("burst-unlimited", transport), 20),
            "default, 20": await pings_refused(server, transport, credential("burst-default-over", transport), 20),
            "default, 6": await pings_refused(server, transport, credential("burst-default-under", transport), 6),
            "lowered, 6": await pings_refused(server, transport, credential("burst-lowered", transport), 6),
        }

    refused = within(scenario)
    assert refused["raised"] == 0  # burst=40: twenty at once are within it
    assert refused["unlimited"] == 0  # rate=0: no request budget at all
    assert refused["default, 20"] > 0  # the default burst of 10 ...
    assert refused["default, 6"] == 0  # ... holds six
    assert refused["lowered, 6"] > 0  # burst=3 does not


def test_a_token_without_a_configured_audience_keeps_the_defaults(tokens: Tokens, tokens_server: ChartServer) -> None:
    """An audience that is not in the mapping changes nothing: only the mapping's audiences carry limits."""
    token = tokens.token("unmapped", [AUDIENCE, "aud-unknown-to-the-server"])
    outcomes = within(lambda: open_sessions(tokens_server, "http", token, 5))
    assert outcomes == ["ok"] * 4 + ["initialize limit"]


# == the key file changes while the server runs ====================================================================


RELOAD_KEYS = {
    "up": "initialize=1,burst=100",
    "down": "burst=100",
    "steady": "burst=100,initialize=100",
}


@pytest.fixture(scope="module")
def reload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChartServer, Path]]:
    key_file = tmp_path_factory.mktemp("reload-keys") / "api-keys"
    key_file.write_text("".join(key_line(name, options) for name, options in RELOAD_KEYS.items()))
    server = serve_as_chart(tmp_path_factory, "reloaded-limits", args=["--api-key-file", str(key_file)], env=DEFAULTS)
    yield server, key_file
    server.stop()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` (the key file is checked at most once a second, at a request) until it holds."""
    deadline = time.monotonic() + 15
    while not await condition():
        assert time.monotonic() < deadline, f"not within 15 s: {what}"
        await asyncio.sleep(0.25)


def test_changed_limits_in_the_key_file_apply_without_a_restart(reload_server: tuple[ChartServer, Path]) -> None:
    server, key_file = reload_server

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with AsyncExitStack() as held:
            seen["up before"] = await open_sessions(server, "http", secret("up"), 1) + await open_sessions(
                server, "tcp", secret("up"), 1
            )
            down_tcp = await held.enter_async_context(connect(server, "tcp", secret("down")))
            assert await down_tcp.initialize() == "ok"
            seen["down before"] = [outcome(await down_tcp.request(n, "ping")) for n in range(1, 6)]

            key_file.write_text(key_line("up", "initialize=20,burst=100") + key_line("down", "burst=3")
                                + key_line("steady", RELOAD_KEYS["steady"]))  # fmt: skip

            async def up_may_initialize_again() -> bool:
                return (await open_sessions(server, "http", secret("up"), 1)) == ["ok"]

            await until(up_may_initialize_again, "the raised initialize limit of 'up' applies")
            seen["up after, tcp"] = await open_sessions(server, "tcp", secret("up"), 1)
            # the connection opened before the change is held to the new limits too
            seen["down after, same connection"] = [outcome(await down_tcp.request(n, "ping")) for n in range(6, 12)]
            # ... and so is a new one over HTTP: the bucket it shares holds 3 tokens at most now, all taken
            seen["down after, http"] = await open_sessions(server, "http", secret("down"), 1)
        return seen

    seen = within(scenario)
    assert seen["up before"] == ["ok", "initialize limit"]
    assert seen["down before"] == ["ok"] * 5
    assert seen["up after, tcp"] == ["ok"]
    assert seen["down after, same connection"][-1] == "rate"  # burst=3 now
    assert seen["down after, http"] == ["rate"]  # with burst=100, some 90 tokens would be left


def test_a_malformed_option_on_reload_keeps_the_keys_in_force(reload_server: tuple[ChartServer, Path]) -> None:
    server, key_file = reload_server
    key_file.write_text(key_line("steady", "burst=100,initialize=lots"))  # 'up' and 'down' would go

    def refusal_logged() -> list[dict[str, Any]]:
        return [r for r in server.log_records() if "cannot be used" in str(r.get("message", r.get("event", "")))]

    async def scenario() -> tuple[list[str], list[str]]:
        async def logged() -> bool:
            await open_sessions(server, "http", secret("steady"), 1)  # a request makes the server look at the file
            return bool(refusal_logged())

        await until(logged, "the malformed key file is noticed")
        still_up = await open_sessions(server, "tcp", secret("up"), 1)  # 'up' is still a key, with its limits
        steady = await open_sessions(server, "http", secret("steady"), 1)
        return still_up, steady

    still_up, steady = within(scenario)
    assert still_up == ["ok"]
    assert steady == ["ok"]  # its old limits (initialize=100), not a broken new one
    reason = str(refusal_logged()[0])
    assert "line 1" in reason, reason
    assert "initialize='lots'" in reason, reason


def test_a_malformed_option_at_start_is_refused_naming_the_line(tmp_path: Path) -> None:
    key_file = tmp_path / "api-keys"
    key_file.write_text(key_line("fine", "rate=5") + key_line("broken", "rate=5,bursts=9"))
    port, metrics_port = free_ports(2)
    command = [sys.executable, "-m", "app", "--api-key-file", str(key_file),
               "--port", str(port), "--metrics-port", str(metrics_port)]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "ERLMCP_LOG_FORMAT": "json"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "line 2" in result.stderr, result.stderr
    assert "unknown option 'bursts'" in result.stderr, result.stderr
