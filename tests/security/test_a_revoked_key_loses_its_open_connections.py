"""Finding 23b: a revoked key's open connection kept working.

The key file is read again when it changes, so a key taken out of it is refused by every new HTTP request and
every new connection; but a WebSocket, TCP or SSE connection opened with it before, and the session it holds, went
on being served for as long as the connection stayed open. A connection authenticated by a JWT kept working past
its token's ``exp`` the same way: the token was checked once, at the connection.

Now a connection whose credential is revoked (its key is no longer in the key file) or expired (its token's
``exp`` has passed) is refused at its next message with a JSON-RPC error saying so, and then closed: a WebSocket
with 1008, a TCP connection after the error line, an SSE stream after the error event. A ``GET /mcp`` stream, on
which the client sends nothing, ends the same way at its next keep-alive. Over HTTP each request is admitted on its
own, so a session's next request is refused with 401. Another principal's connection on the same door goes on.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.doors import TIMEOUT, LinePeer, Peer, SsePeer, WebSocketPeer, run, session
from tests.security.conftest import KEYS, ChartServer, serve_as_chart

pytestmark = pytest.mark.slow

SCENARIO_SECONDS = 60.0  # a whole scenario; a hang fails the test instead of stalling the run
KEEPALIVE = 1  # seconds: the server's ERLMCP_SSE_KEEPALIVE_SECONDS, so that a quiet GET stream is checked soon
TOKEN_SECONDS = 4  # a token's lifetime: long enough to connect and be served, short enough to see it expire
NOTICED_WITHIN = 15.0  # generous: the key file is read again at most once a second after it changes
ISSUER, AUDIENCE = "https://issuer.revocation.test", "https://mcp.revocation.test"
INVALID_REQUEST = -32600
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "revoked", "version": "1"}}
DOORS = ["sse", "websocket", "tcp", "http-get", "http"]
CREDENTIALS = ["key", "token"]
# A key per door that a test revokes, each scoped as the review's `limited` key.
DOOMED = {f"doomed-{door}": ("tools:echo", f"doomed-{door}-key-0123456789abcdef") for door in DOORS}


class Issuer:
    """An identity provider's signing key; the server trusts its public key."""

    def __init__(self, root: Path) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.public_key_file = root / "issuer.pem"
        public = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_file.write_bytes(public)

    def token(self, subject: str, seconds: int) -> str:
        claims = {"iss": ISSUER, "sub": subject, "aud": AUDIENCE, "exp": int(time.time()) + seconds}
        return jwt.encode(claims, self._key, algorithm="ES256")


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("revocation-issuer"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: Issuer) -> Iterator[ChartServer]:
    """The chart's server with a key per door to revoke, accepting the issuer's tokens too (no clock leeway)."""
    args = ["--jwt-public-key-file", str(issuer.public_key_file), "--jwt-issuer", ISSUER]
    env = {
        "ERLMCP_JWT_AUDIENCE": AUDIENCE,
        "ERLMCP_JWT_LEEWAY_SECONDS": "0",
        "ERLMCP_SSE_KEEPALIVE_SECONDS": str(KEEPALIVE),
    }
    running = serve_as_chart(tmp_path_factory, "revocation", args=args, env=env, keys=KEYS | DOOMED)
    yield running
    running.stop()


def revoke(server: ChartServer, name: str) -> None:
    """Take the key ``name`` out of the key file (replaced whole, as Kubernetes replaces a mounted Secret)."""
    del server.keys[name]
    key_file = server.root / "api-keys"
    staged = key_file.with_suffix(".new")
    staged.write_text("".join(f"{key_name} {scopes} {key}\n" for key_name, (scopes, key) in server.keys.items()))
    os.replace(staged, key_file)


# -- one long-lived connection per door, with one verb: ask a ping -------------------------------------------------


class Stream:
    """``GET /mcp``: a session's standalone stream, on which the client sends nothing. ``ask`` reads the stream's
    next event instead (after keep-alives), or None once the stream ended."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next_event(self) -> dict[str, Any] | None:
        data: list[str] = []
        async for line in self._lines:
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and any(data):
                return dict(orjson.loads("".join(data)))
            elif not line:
                data = []
        return None


@asynccontextmanager
async def get_stream(server: ChartServer, credential: str) -> AsyncIterator[Stream]:
    """A new session (initialized over POST /mcp) and its standalone GET stream, past its priming event."""
    bearer = {"Authorization": f"Bearer {credential}"}
    async with httpx.AsyncClient(base_url=server.url, headers=bearer, timeout=TIMEOUT) as client:
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        hello = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}
        opened = await client.post("/mcp", content=orjson.dumps(hello), headers=headers)
        assert opened.status_code == 200, opened.text
        ids = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        read = httpx.Timeout(TIMEOUT, read=NOTICED_WITHIN + TOKEN_SECONDS)
        async with client.stream("GET", "/mcp", headers={"Accept": "text/event-stream", **ids}, timeout=read) as got:
            assert got.status_code == 200, await got.aread()
            stream = Stream(got)
            async for line in stream._lines:  # the priming event: the stream is open
                if not line:
                    break
            yield stream


Connection = Peer | Stream


@asynccontextmanager
async def connection(door: str, server: ChartServer, credential: str) -> AsyncIterator[Connection]:
    if door == "http-get":
        async with get_stream(server, credential) as stream:
            yield stream
    else:
        async with session(f"{door}-handshake", server, credential) as peer:
            yield peer


_IDS = itertools.count(1)


async def ask(connection: Connection) -> dict[str, Any] | None:
    """A ping's answer (on a GET stream: its next event); None: the connection ended."""
    if isinstance(connection, Stream):
        return await connection.next_event()
    answer: dict[str, Any] = await connection.ask(connection.request(next(_IDS), "ping"))
    return answer


async def first_refusal(connection: Connection) -> dict[str, Any]:
    """Ask until the connection is refused: the JSON-RPC error it was refused with."""
    bound = NOTICED_WITHIN + TOKEN_SECONDS
    with anyio.move_on_after(bound):
        while True:
            answer = await ask(connection)
            assert answer is not None, "the connection ended without a JSON-RPC error saying why"
            if "error" in answer:
                return dict(answer["error"])
            assert answer.get("result") == {} or "method" in answer, answer
            await anyio.sleep(0.25)
    raise AssertionError(f"the connection was still served {bound:g} s after its credential was taken away")


async def ended(connection: Connection) -> bool:
    """Whether the server closed the connection after the refusal."""
    if isinstance(connection, LinePeer):
        return await connection.ended()
    if isinstance(connection, WebSocketPeer | SsePeer):
        try:
            await connection.receive()
        except AssertionError as gone:
            why = str(gone)
        else:
            return False
        assert "WebSocket was closed: 1008" in why or "SSE stream ended" in why, why
        return True
    if isinstance(connection, Stream):
        with anyio.fail_after(TIMEOUT):
            return await connection.next_event() is None
    return True  # HTTP: each request is admitted on its own; nothing stays open


def credential_of(kind: str, door: str, server: ChartServer, issuer: Issuer) -> tuple[str, Callable[[], None]]:
    """A credential for the door, and how it is taken away (its key revoked, or nothing: its token expires)."""
    if kind == "key":
        name = f"doomed-{door}"
        return server.key(name), lambda: revoke(server, name)
    return issuer.token(f"user-{door}", TOKEN_SECONDS), lambda: None


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("kind", CREDENTIALS)
def test_a_connection_whose_credential_is_revoked_or_expired_is_refused_then_closed(
    server: ChartServer, issuer: Issuer, kind: str, door: str
) -> None:
    credential, take_away = credential_of(kind, door, server, issuer)

    async def scenario() -> None:
        async with (
            connection(door, server, credential) as doomed,
            connection(door, server, server.key("other")) as bystander,
        ):
            if not isinstance(doomed, Stream):
                served = await ask(doomed)
                assert served is not None, f"{door}: the connection ended at its first ping"
                assert served.get("result") == {}, f"{door}: the first ping answered {served}"
            take_away()
            refused = await first_refusal(doomed)
            assert refused["code"] == INVALID_REQUEST, refused
            if door == "http":  # admitted anew at each request: refused as any unknown credential
                assert refused["message"].startswith("Unauthorized"), refused
            else:
                said = "revoked" if kind == "key" else "expired"
                assert said in refused["message"], f"the refusal does not say the credential was {said}: {refused}"
            assert await ended(doomed), f"{door}: the connection stayed open after it was refused"
            if not isinstance(bystander, Stream):  # another principal on the same door is still served
                assert "result" in (await ask(bystander) or {})

    run(lambda: _bounded(scenario))


async def _bounded(scenario: Callable[[], Awaitable[None]]) -> None:
    with anyio.fail_after(SCENARIO_SECONDS):
        await scenario()
