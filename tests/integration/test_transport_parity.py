"""The transport parity matrix: each row is one behaviour, written once, that must hold identically through every
door of the server, against real server processes over real sockets.

A door is a transport and the protocol era it speaks (``http-handshake``, ``http-2026``, ``sse-*``,
``websocket-*``, ``tcp-*``, ``stdio-*``); tests/doors.py defines them and reaches each through one small client,
a :class:`~tests.doors.Peer`, so that every row reads the same on every transport.

The rows:

1. a scoped key lists and calls only its tools, through every door, side doors included (tasks, completion,
   resources, prompts), and a tool outside its scopes is refused exactly as one that does not exist;
2. the initialize limit holds across connections;
3. a per-principal session quota holds (ERLMCP_MAX_SESSIONS_PER_PRINCIPAL), across transports too;
4. rate tokens are taken per request message, initialize and batch items included;
5. an over-long message is answered with its id;
6. the message after a malformed or over-long one (or a binary WebSocket frame) is answered;
7. an unauthenticated caller is refused, saying what is missing.

It absorbs the former tests/integration/test_transport_scopes.py and test_tcp_framing.py (their tests keep their
assertions, now run through every door).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus

from app.jsonrpc import INVALID_REQUEST, PARSE_ERROR, RATE_LIMITED
from tests.conftest import RunningServer, free_port, start_server
from tests.doors import (
    ACCEPT,
    API_KEY_META,
    FRAMING_DOORS,
    HANDSHAKE,
    HANDSHAKE_DOORS,
    NETWORK_DOORS,
    SSE_ACCEPT,
    STATELESS,
    STATELESS_DOORS,
    TASKS,
    TIMEOUT,
    LinePeer,
    Peer,
    WebSocketPeer,
    connect,
    era_of,
    run,
    session,
    transport_of,
)

pytestmark = pytest.mark.slow

LIMIT = 4096  # ERLMCP_MAX_REQUEST_BYTES of the framing server
BURST = 3  # ERLMCP_RATE_LIMIT_BURST of the rate server (which refills at 0.01 token/s: not during a test)
QUOTA = 2  # ERLMCP_MAX_SESSIONS_PER_PRINCIPAL of the quota server

REFERENCE = "http-2026"  # the door whose answers the others are compared with

ADMIN, LIMITED = "admin-key-0123456789abcdef", "limited-key-0123456789abcdef"


def secret(name: str) -> str:
    """The key of the key named ``name`` (keys are at least 16 characters)."""
    return f"{name}-key-0123456789abcdef"


def renamed(answer: Any, old: str, new: str) -> Any:
    """``answer`` with every occurrence of ``old`` replaced by ``new``: what an answer about ``old`` would say
    about ``new`` (names and ids are plain ASCII, so the JSON text can be edited as text)."""
    return orjson.loads(orjson.dumps(answer).replace(old.encode(), new.encode()))


def status(response: httpx.Response | None) -> int | None:
    """The HTTP status of a POST (None: the message went over a connection, not a POST)."""
    return response.status_code if response is not None else None


# -- servers: one per configuration, shared by the rows its settings allow ----------------------------------------


@dataclass(frozen=True)
class Server:
    """A running server with a TCP listener, and the settings a stdio process of the same configuration gets."""

    running: RunningServer
    tcp_port: int
    root: Path
    env: Mapping[str, str]

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def port(self) -> int:
        return self.running.port


def serve(
    factory: pytest.TempPathFactory,
    name: str,
    *,
    keys: Mapping[str, tuple[str, str]] | None = None,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> Server:
    """A server with the keys ``{name: (scopes, key)}`` (without keys: authentication off)."""
    root = factory.mktemp(name)
    flags = list(args)
    if keys:
        path = root / "keys"
        path.write_text("".join(f"{key_name} {scopes} {key}\n" for key_name, (scopes, key) in keys.items()))
        flags += ["--api-key-file", str(path)]
    else:
        flags.append("--no-auth")
    tcp_port = free_port()
    running = start_server(root, [*flags, "--tcp-port", str(tcp_port)], dict(env or {}))
    return Server(running, tcp_port, root, dict(env or {}))


@pytest.fixture(scope="module")
def scopes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The built-in catalogue (echo, add, ...), an admin key and a key limited to echo."""
    server = serve(tmp_path_factory, "scopes", keys={"admin": ("*", ADMIN), "limited": ("tools:echo", LIMITED)})
    yield server
    server.running.stop()


@pytest.fixture(scope="module")
def side_door_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The conformance profile: task tools (slow_compute, confirm_delete, ...), a tool with an x-mcp-header
    parameter, resources, a resource template and prompts. A catalogue file cannot declare task support, so this
    built-in profile is the one configuration that opens every side door. The limited key may use greet and
    slow_compute (a task tool of its own)."""
    keys = {"admin": ("*", ADMIN), "limited": ("tools:greet,tools:slow_compute", LIMITED)}
    server = serve(tmp_path_factory, "side-doors", keys=keys, args=("--catalog", "conformance"))
    yield server
    server.running.stop()


@pytest.fixture(scope="module")
def initialize_limit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each caller may send 3 initialize requests a minute; a key of its own per door."""
    keys = {f"init-{door}": ("*", secret(f"init-{door}")) for door in HANDSHAKE_DOORS}
    server = serve(tmp_path_factory, "initialize-limit", keys=keys, env={"ERLMCP_INITIALIZE_PER_MINUTE": "3"})
    yield server
    server.running.stop()


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each principal may hold QUOTA sessions; the initialize limit is out of the way (a freed slot is polled for)."""
    names = [*(f"quota-{door}" for door in HANDSHAKE_DOORS), *(f"quota-{door}-other" for door in HANDSHAKE_DOORS)]
    keys = {name: ("*", secret(name)) for name in [*names, "quota-mixed"]}
    env = {"ERLMCP_MAX_SESSIONS_PER_PRINCIPAL": str(QUOTA), "ERLMCP_INITIALIZE_PER_MINUTE": "100000"}
    server = serve(tmp_path_factory, "session-quota", keys=keys, env=env)
    yield server
    server.running.stop()


@pytest.fixture(scope="module")
def rate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each client may send BURST requests at once, then 0.01 a second (none during a test); a key per test."""
    names = [*(f"rate-{door}" for door in NETWORK_DOORS), "rate-batch-whole", "rate-batch-items"]
    env = {"ERLMCP_RATE_LIMIT_PER_SECOND": "0.01", "ERLMCP_RATE_LIMIT_BURST": str(BURST)}
    server = serve(tmp_path_factory, "rate", keys={name: ("*", secret(name)) for name in names}, env=env)
    yield server
    server.running.stop()


@pytest.fixture(scope="module")
def framing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Messages are limited to LIMIT bytes; no authentication (stdio has none, and framing does not depend on it)."""
    server = serve(tmp_path_factory, "framing", env={"ERLMCP_MAX_REQUEST_BYTES": str(LIMIT)})
    yield server
    server.running.stop()


# -- peers: one client per door, all with the same few verbs ------------------------------------------------------


def listing(peer: Peer, request_id: Any) -> dict[str, Any]:
    return peer.request(request_id, "tools/list")


def echo(peer: Peer, request_id: Any, size: int) -> dict[str, Any]:
    return peer.request(request_id, "tools/call", {"name": "echo", "arguments": {"text": "x" * size}})


def call(peer: Peer, request_id: Any, name: str, arguments: Mapping[str, Any], capabilities: Any = None) -> Any:
    params = {"name": name, "arguments": dict(arguments)}
    return peer.request(request_id, "tools/call", params, capabilities=capabilities)


# == Row 1: a scoped key lists and calls only its tools, through every door ========================================
# (stdio has no authentication, hence no scopes: it is not a door here.)


@pytest.mark.parametrize("door", NETWORK_DOORS)
def test_a_scoped_key_lists_only_its_tools_on_every_transport(scopes_server: Server, door: str) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with session(door, scopes_server, LIMITED) as limited, session(door, scopes_server, ADMIN) as admin:
            return await limited.ask(listing(limited, 1)), await admin.ask(listing(admin, 1))

    listed, everything = run(scenario)
    assert [tool["name"] for tool in listed["result"]["tools"]] == ["echo"]
    assert len(everything["result"]["tools"]) > 1  # the admin key sees the whole catalogue through the same door


@pytest.mark.parametrize("door", NETWORK_DOORS)
def test_a_scoped_key_calling_another_tool_gets_the_same_refusal_on_every_transport(
    scopes_server: Server, door: str
) -> None:
    async def scenario() -> tuple[Any, Any, Any]:
        async with session(door, scopes_server, LIMITED) as peer:
            refused = await peer.ask(call(peer, 7, "add", {"a": 1, "b": 2}))
            served = await peer.ask(call(peer, 8, "echo", {"text": "hi"}))
        async with session(REFERENCE, scopes_server, LIMITED) as peer:
            reference = await peer.ask(call(peer, 7, "add", {"a": 1, "b": 2}))
        return refused, served, reference

    refused, served, reference = run(scenario)
    assert refused == reference  # the same error, code and message, as over /mcp in 2026-07-28
    assert refused["id"] == 7
    assert "error" in refused or refused["result"].get("isError") is True
    assert served["result"]["content"][0]["text"] == "hi"


NO_SUCH_TOOL = "no-such-tool-0123"
# Out-of-scope calls that could tell a scoped key a tool exists, by what is checked before the scopes:
# (tool, arguments, client capabilities declared on the request).
OUT_OF_SCOPE_CALLS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "plain-tool": ("test_simple_text", {}, None),
    "task-required-tool-without-the-extension": ("confirm_delete", {}, {}),  # else: -32021, needs the extension
    "task-augmented-call": ("confirm_delete", {}, TASKS),  # else: a task of a tool the key may not use
    "tool-with-a-mirrored-header": ("test_x_mcp_header", {"region": "eu-west"}, None),  # else: -32020, no header
}
ORACLE_CASES = [
    pytest.param(door, variant, id=f"{door}-{variant}")
    for door in NETWORK_DOORS
    for variant, (_, _, capabilities) in OUT_OF_SCOPE_CALLS.items()
    if era_of(door) == STATELESS or not capabilities  # the handshake era declares capabilities once, at initialize
]


@pytest.mark.parametrize(("door", "variant"), ORACLE_CASES)
def test_a_tool_outside_the_scopes_is_refused_exactly_like_a_tool_that_does_not_exist(
    side_door_server: Server, door: str, variant: str
) -> None:
    """Whatever the server checks about a call before its scopes (a required client capability, mirrored headers,
    the tool's existence) must not tell a scoped key that a tool it may not use exists."""
    name, arguments, capabilities = OUT_OF_SCOPE_CALLS[variant]

    async def scenario() -> tuple[Any, Any]:
        async with session(door, side_door_server, LIMITED) as peer:
            refused = await peer.ask(call(peer, 3, name, arguments, capabilities))
            unknown = await peer.ask(call(peer, 3, NO_SUCH_TOOL, arguments, capabilities))
        return refused, unknown

    refused, unknown = run(scenario)
    assert refused == renamed(unknown, NO_SUCH_TOOL, name)
    assert refused["id"] == 3
    assert "error" in refused or refused["result"].get("isError") is True, refused


UNKNOWN_TASK = "task-" + "0" * 24
ANSWER = {"elicit-1": {"action": "accept", "content": {"confirm": True}}}  # confirm_delete's one question


async def start_task(peer: Peer, request_id: int, name: str, arguments: Mapping[str, Any]) -> str:
    started = await peer.ask(call(peer, request_id, name, arguments, TASKS))
    assert started.get("result", {}).get("resultType") == "task", f"{peer.door}: no task was started: {started}"
    return str(started["result"]["taskId"])


async def task_request(peer: Peer, request_id: int, method: str, task_id: str, **extra: Any) -> Any:
    return await peer.ask(peer.request(request_id, method, {"taskId": task_id, **extra}, capabilities=TASKS))


@pytest.mark.parametrize("door", STATELESS_DOORS)  # tasks are a 2026-07-28 extension
def test_a_task_started_by_another_key_is_unknown_to_a_scoped_key(side_door_server: Server, door: str) -> None:
    """The admin key's task (of a tool the limited key may not use) cannot be read, answered or cancelled with the
    limited key: each is refused exactly as for a task id never issued, and the task goes on untouched."""

    async def scenario() -> tuple[dict[str, tuple[Any, Any]], Any]:
        async with session(door, side_door_server, ADMIN) as admin, session(door, side_door_server, LIMITED) as peer:
            task_id = await start_task(admin, 1, "confirm_delete", {})  # waits for its one answer
            answers = {}
            for method, extra in (
                ("tasks/get", {}),
                ("tasks/update", {"inputResponses": ANSWER}),
                ("tasks/cancel", {}),
            ):
                theirs = await task_request(peer, 2, method, task_id, **extra)
                unknown = await task_request(peer, 2, method, UNKNOWN_TASK, **extra)
                answers[method] = (theirs, renamed(unknown, UNKNOWN_TASK, task_id))
            after = await task_request(admin, 3, "tasks/get", task_id)
            await task_request(admin, 4, "tasks/cancel", task_id)
        return answers, after

    answers, after = run(scenario)
    leaked = {method: theirs for method, (theirs, unknown) in answers.items() if theirs != unknown}
    assert not leaked, f"answered unlike an unknown task ({answers['tasks/get'][1]}): {leaked}"
    assert after["result"]["status"] in {"working", "input_required"}  # neither answered nor cancelled by the other key


@pytest.mark.parametrize("door", STATELESS_DOORS)
def test_a_task_belongs_to_the_key_that_started_it_even_when_both_may_call_its_tool(
    side_door_server: Server, door: str
) -> None:
    """The limited key may call slow_compute and poll its own task; the admin key's task of the same tool is
    unknown to it all the same."""

    async def scenario() -> tuple[Any, Any, Any]:
        async with session(door, side_door_server, ADMIN) as admin, session(door, side_door_server, LIMITED) as peer:
            theirs_id = await start_task(admin, 1, "slow_compute", {"seconds": 600})
            mine_id = await start_task(peer, 2, "slow_compute", {"seconds": 600})
            mine = await task_request(peer, 3, "tasks/get", mine_id)
            theirs = await task_request(peer, 4, "tasks/get", theirs_id)
            unknown = await task_request(peer, 4, "tasks/get", UNKNOWN_TASK)
            await task_request(peer, 5, "tasks/cancel", mine_id)
            await task_request(admin, 6, "tasks/cancel", theirs_id)
        return mine, theirs, renamed(unknown, UNKNOWN_TASK, theirs_id)

    mine, theirs, unknown = run(scenario)
    assert mine["result"]["status"] == "working"  # the tasks door is open to the limited key, for its own tasks
    assert theirs == unknown


SIDE_DOORS: list[tuple[str, dict[str, Any]]] = [
    ("resources/list", {}),
    ("resources/templates/list", {}),
    ("resources/read", {"uri": "test://static-text"}),
    ("prompts/list", {}),
    ("prompts/get", {"name": "test_simple_prompt"}),
    (
        "completion/complete",
        {
            "ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"},
            "argument": {"name": "arg1", "value": ""},
        },
    ),
]


def names_in(answer: Any, names: set[str]) -> set[str]:
    text = orjson.dumps(answer).decode()
    return {name for name in names if re.search(rf"(?<![\w.\-]){re.escape(name)}(?![\w.\-])", text)}


@pytest.mark.parametrize("door", NETWORK_DOORS)
def test_resources_prompts_and_completion_name_no_tool_outside_the_scopes(side_door_server: Server, door: str) -> None:
    """What a scoped key reads through the other features (and the initialize or server/discover answer) names no
    tool it may not use."""

    async def scenario() -> tuple[Any, Any, list[Any]]:
        async with session(door, side_door_server, ADMIN) as admin:
            everything = await admin.ask(listing(admin, 1))
        async with session(door, side_door_server, LIMITED) as peer:
            visible = await peer.ask(listing(peer, 1))
            answers = [peer.opening] if peer.era == HANDSHAKE else [await peer.ask(peer.request(2, "server/discover"))]
            for request_id, (method, params) in enumerate(SIDE_DOORS, start=3):
                answers.append(await peer.ask(peer.request(request_id, method, params)))
        return everything, visible, answers

    everything, visible, answers = run(scenario)
    hidden = {t["name"] for t in everything["result"]["tools"]} - {t["name"] for t in visible["result"]["tools"]}
    assert hidden, "the limited key should not see every tool"
    unanswered = [answer for answer in answers if "result" not in answer]
    assert not unanswered
    leaks = {answer["id"]: names_in(answer, hidden) for answer in answers if names_in(answer, hidden)}
    assert not leaks


# == Row 2: the initialize limit holds across connections, on every transport =====================================
# (http-2026 and stdio: no initialize in 2026-07-28; one stdio process is one client.)


@pytest.mark.parametrize("door", HANDSHAKE_DOORS)
def test_the_initialize_limit_holds_across_connections_on_every_transport(
    initialize_limit_server: Server, door: str
) -> None:
    """One connection carries one session, so a client opening many connections must meet the same per-caller
    initialize limit as over /mcp (one key once took the whole session table over 40 WebSocket connections)."""
    key = secret(f"init-{door}")

    async def scenario() -> list[Any]:
        outcomes = []
        for request_id in range(1, 6):
            async with connect(door, initialize_limit_server, key) as peer:
                outcomes.append(await peer.ask(peer.initialize_request(request_id)))
        return outcomes

    outcomes = run(scenario)
    opened = [o for o in outcomes if "result" in o]
    refused = [o for o in outcomes if "error" in o]
    assert len(opened) <= 3, outcomes
    assert refused, outcomes
    assert all(o["error"]["message"].startswith("Too Many Requests: initialize is limited") for o in refused)
    assert all(o["error"]["data"]["retryAfter"] >= 1 for o in refused)
    assert len(opened) == 3, outcomes  # a key of its own per door: exactly the limit, through this door alone
    assert [(o["id"], o["error"]["code"]) for o in refused] == [(4, RATE_LIMITED), (5, RATE_LIMITED)]


# == Row 3: a per-principal session quota holds ====================================================================
# A session: a handshake over HTTP, a connection that initialized elsewhere. (http-2026 keeps no sessions; stdio
# is one process per client, so one session per process: no quota to reach.)


def assert_quota_refusal(answer: Any, request_id: int) -> None:
    assert "error" in answer, f"the initialize over the quota was not refused: {answer}"
    assert answer["id"] == request_id, answer
    assert answer["error"]["code"] == RATE_LIMITED, answer
    assert "sessions" in answer["error"]["message"], answer


async def initialize_when_free(door: str, server: Server, key: str, request_id: int) -> Any:
    """Initialize through ``door`` on fresh connections until a session opens (the server may take a moment to
    see a closed connection); the first answer that is not the quota's refusal."""
    answer: Any = None
    try:
        with anyio.fail_after(TIMEOUT):
            while True:
                async with connect(door, server, key) as peer:
                    answer = await peer.ask(peer.initialize_request(request_id))
                    if "result" in answer or "sessions" not in answer.get("error", {}).get("message", ""):
                        return answer
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{door}: no session slot was freed within {TIMEOUT:g} s: {answer}") from None


@pytest.mark.parametrize("door", HANDSHAKE_DOORS)
def test_a_principal_holds_at_most_its_quota_of_sessions(quota_server: Server, door: str) -> None:
    key, other = secret(f"quota-{door}"), secret(f"quota-{door}-other")

    async def scenario() -> tuple[list[Any], httpx.Response | None, Any, Any, Any]:
        async with (
            connect(door, quota_server, key) as first,
            connect(door, quota_server, key) as second,
            connect(door, quota_server, key) as third,
            connect(door, quota_server, other) as elsewhere,
        ):
            opened = [await first.ask(first.initialize_request(1)), await second.ask(second.initialize_request(2))]
            post = await third.send(third.initialize_request(3))
            refused = await third.receive()
            theirs = await elsewhere.ask(elsewhere.initialize_request(4))
            await first.end()
            reopened = await initialize_when_free(door, quota_server, key, 5)
        return opened, post, refused, theirs, reopened

    opened, post, refused, theirs, reopened = run(scenario)
    assert all("result" in answer for answer in opened), opened
    assert_quota_refusal(refused, 3)
    if transport_of(door) == "http":
        assert status(post) == 429, refused
    assert "result" in theirs, theirs  # another key still opens sessions
    assert "result" in reopened, reopened  # ending a session frees its slot


def test_sessions_through_different_transports_count_against_one_quota(quota_server: Server) -> None:
    key = secret("quota-mixed")

    async def scenario() -> tuple[list[Any], Any, httpx.Response | None, Any, Any]:
        async with (
            connect("websocket-handshake", quota_server, key) as websocket,
            connect("http-handshake", quota_server, key) as http,
            connect("tcp-handshake", quota_server, key) as tcp,
            connect("http-handshake", quota_server, key) as http_again,
        ):
            opened = [await websocket.ask(websocket.initialize_request(1)), await http.ask(http.initialize_request(2))]
            over_tcp = await tcp.ask(tcp.initialize_request(3))
            post = await http_again.send(http_again.initialize_request(4))
            over_http = await http_again.receive()
            await websocket.end()
            reopened = await initialize_when_free("http-handshake", quota_server, key, 5)
        return opened, over_tcp, post, over_http, reopened

    opened, over_tcp, post, over_http, reopened = run(scenario)
    assert all("result" in answer for answer in opened), opened  # 1 WebSocket + 1 HTTP session: the quota of 2
    assert_quota_refusal(over_tcp, 3)
    assert_quota_refusal(over_http, 4)
    assert status(post) == 429
    assert "result" in reopened, reopened  # closing the WebSocket freed its slot for an HTTP session


# == Row 4: rate tokens are taken per request message, initialize and batch items included =========================
# N request messages cost N tokens on every door (notifications and responses cost none, and are not sent here).
# (stdio: one local client; its budget is not a door's business.)


@pytest.mark.parametrize("door", NETWORK_DOORS)
def test_every_request_message_costs_one_rate_token(rate_server: Server, door: str) -> None:
    key = secret(f"rate-{door}")

    async def scenario() -> list[tuple[Any, Any, httpx.Response | None]]:
        exchanges = []
        async with connect(door, rate_server, key) as peer:
            messages = [peer.initialize_request(1)] if peer.era == HANDSHAKE else []
            messages += [listing(peer, request_id) for request_id in range(len(messages) + 1, BURST + 3)]
            for message in messages:  # one at a time: the refusals cannot overtake the answers
                post = await peer.send(message)
                exchanges.append((message, await peer.receive(), post))
        return exchanges

    exchanges = run(scenario)
    assert [answer["id"] for message, answer, _ in exchanges] == [message["id"] for message, _, _ in exchanges]
    assert all("result" in answer for _, answer, _ in exchanges[:BURST]), exchanges[:BURST]
    for _, answer, post in exchanges[BURST:]:
        assert "error" in answer, answer
        assert answer["error"]["code"] == RATE_LIMITED, answer
        assert "Too Many Requests" in answer["error"]["message"], answer
        if transport_of(door) == "http":
            assert post is not None
            assert post.status_code == 429, answer
            assert int(post.headers["retry-after"]) >= 1


def test_a_batch_of_more_requests_than_the_burst_is_refused_whole(rate_server: Server) -> None:
    """A 2025-03-26 batch of 5 requests cannot be paid for with a burst of 3: refused as a whole, not answered, and
    as too large (413), since no wait would let it through (as a batch over the item limit is)."""

    async def scenario() -> tuple[Any, httpx.Response | None, Any]:
        async with connect("http-handshake", rate_server, secret("rate-batch-whole")) as peer:
            opened = await peer.ask(peer.initialize_request(1, version="2025-03-26"))
            post = await peer.send([peer.request(request_id, "ping") for request_id in range(11, 16)])
            return opened, post, await peer.receive()

    opened, post, answer = run(scenario)
    assert opened["result"]["protocolVersion"] == "2025-03-26"
    assert status(post) == 413, answer
    refusals = answer if isinstance(answer, list) else [answer]
    assert refusals, answer
    assert all(item.get("error", {}).get("code") == INVALID_REQUEST for item in refusals), answer
    assert all(f"more than the {BURST}" in item["error"]["message"] for item in refusals), answer


def test_each_request_of_a_batch_costs_one_rate_token(rate_server: Server) -> None:
    async def scenario() -> tuple[Any, Any, httpx.Response | None, Any]:
        async with connect("http-handshake", rate_server, secret("rate-batch-items")) as peer:
            opened = await peer.ask(peer.initialize_request(1, version="2025-03-26"))  # 1 token
            batch = await peer.ask([peer.request(11, "ping"), peer.request(12, "ping")])  # 2 tokens: the burst
            post = await peer.send(peer.request(13, "ping"))
            return opened, batch, post, await peer.receive()

    opened, batch, post, after = run(scenario)
    assert "result" in opened, opened
    assert sorted(item["id"] for item in batch if "result" in item) == [11, 12], batch
    assert status(post) == 429, after
    assert after["id"] == 13, after
    assert after["error"]["code"] == RATE_LIMITED, after


# == Row 5: an over-long message is answered with its id ===========================================================
# Over HTTP the body is sent without Content-Length (chunked), so that the server reads its start; the answer is a
# 413 whose body is the refusal (legacy SSE: the POST's 413 body, and the same refusal on the stream).


@pytest.mark.parametrize(
    "size", [LIMIT * 2, LIMIT * 64], ids=["over-long-line-buffered-whole", "over-long-line-in-parts"]
)
@pytest.mark.parametrize("door", FRAMING_DOORS)
def test_an_over_long_message_is_refused_with_its_id_and_the_next_is_answered(
    framing_server: Server, door: str, size: int
) -> None:
    async def scenario() -> tuple[httpx.Response | None, Any, Any]:
        async with session(door, framing_server) as peer:
            post, _ = await peer.send_all(echo(peer, 5, size), listing(peer, 6), chunked=True)
            return post, await peer.receive(), await peer.receive()

    post, refused, answered = run(scenario)
    assert refused["id"] == 5
    assert refused["error"]["code"] == -32600
    assert "too large" in refused["error"]["message"]
    assert answered["id"] == 6
    assert "tools" in answered["result"]
    if post is not None:  # HTTP, and the POST /messages of legacy SSE
        assert post.status_code == 413
        assert orjson.loads(post.content) == refused


@pytest.mark.parametrize("door", FRAMING_DOORS)
def test_an_over_long_message_whose_id_cannot_be_read_is_refused_with_a_null_id(
    framing_server: Server, door: str
) -> None:
    garbage = b'{"jsonrpc": "2.0", "params": {"x": "' + b"y" * LIMIT * 64 + b'"}, "id": 9}'

    async def scenario() -> tuple[Any, Any]:
        async with session(door, framing_server) as peer:
            await peer.send_all(garbage, listing(peer, 10), chunked=True)
            return await peer.receive(), await peer.receive()

    refused, answered = run(scenario)
    assert refused["id"] is None  # the id comes long after the limit: it is never read
    assert answered["id"] == 10


@pytest.mark.parametrize("door", FRAMING_DOORS)
def test_messages_within_the_limit_are_answered_in_turn(framing_server: Server, door: str) -> None:
    async def scenario() -> list[Any]:
        async with session(door, framing_server) as peer:
            await peer.send_all(listing(peer, 1), echo(peer, "two", 10), listing(peer, 3))
            return [await peer.receive() for _ in range(3)]

    assert [a["id"] for a in run(scenario)] == [1, "two", 3]


# == Row 6: the message after a malformed one is answered ==========================================================
# (After an over-long one: row 5.)


@pytest.mark.parametrize("door", FRAMING_DOORS)
def test_the_message_after_a_malformed_one_is_answered(framing_server: Server, door: str) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with session(door, framing_server) as peer:
            await peer.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": ', listing(peer, 2))
            return await peer.receive(), await peer.receive()

    refused, answered = run(scenario)
    assert refused["id"] is None
    assert refused["error"]["code"] == PARSE_ERROR
    assert answered["id"] == 2
    assert "tools" in answered["result"]


def test_a_binary_websocket_frame_is_refused_and_the_next_text_message_is_answered(framing_server: Server) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with session("websocket-2026", framing_server) as peer:
            assert isinstance(peer, WebSocketPeer)
            await peer.send_binary(orjson.dumps(listing(peer, 1)))
            refused = await peer.receive()
            return refused, await peer.ask(listing(peer, 2))

    refused, answered = run(scenario)
    assert refused["id"] is None
    assert refused["error"]["code"] == INVALID_REQUEST
    assert "text frames" in refused["error"]["message"]
    assert answered["id"] == 2
    assert "tools" in answered["result"]


# == Row 7: an unauthenticated caller is refused, saying what is missing ===========================================
# HTTP and the WebSocket upgrade: 401 with WWW-Authenticate and the JSON-RPC error; TCP: an error, then the
# connection closes.


@pytest.mark.parametrize("door", ["http-handshake", "http-2026", "sse-2026", "websocket-2026", "tcp-2026"])
def test_an_unauthenticated_caller_is_refused_saying_what_is_missing(scopes_server: Server, door: str) -> None:
    transport = transport_of(door)
    if transport == "websocket":
        with pytest.raises(InvalidStatus) as upgrade:
            run(lambda: _connect_only(door, scopes_server))
        response = upgrade.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        error = orjson.loads(response.body or b"null")["error"]
        assert error["code"] == INVALID_REQUEST
        assert error["message"].startswith("Unauthorized")
        assert "Authorization" in error["message"]
        return
    if transport == "tcp":

        async def over_tcp() -> tuple[Any, bool]:
            async with connect(door, scopes_server) as peer:
                assert isinstance(peer, LinePeer)
                return await peer.ask(listing(peer, 1)), await peer.ended()

        answer, ended = run(over_tcp)
        assert answer["error"]["code"] == INVALID_REQUEST
        assert answer["error"]["message"].startswith("Unauthorized")
        assert API_KEY_META in answer["error"]["message"]
        assert ended  # the connection closes after the refusal
        return
    with httpx.Client(base_url=scopes_server.url, timeout=TIMEOUT) as client:
        if transport == "sse":
            refused = client.get("/sse", headers=SSE_ACCEPT)
        else:
            headers = {"Accept": ACCEPT, "Content-Type": "application/json"}
            if era_of(door) == STATELESS:
                headers |= {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
            message = Peer(door, None).request(1, "tools/list")
            refused = client.post("/mcp", headers=headers, content=orjson.dumps(message))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    error = refused.json()["error"]
    assert error["code"] == INVALID_REQUEST
    assert error["message"].startswith("Unauthorized")
    assert "Authorization" in error["message"]


async def _connect_only(door: str, server: Server) -> None:
    async with connect(door, server):
        pass
