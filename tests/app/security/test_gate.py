"""The gate resolves its caller once per request: one look at whether the API key file is due to be read again
for an HTTP request (whatever the request: a tools/call, an initialize), one per message on a connection that
stays open, the key's limits built once per version of the key file; and it loads no Redis or JWT support
unless those are configured. The gate's connection slots and revocation are in test_connection_slots.py, the
limits it applies in test_limits.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app.jsonrpc import Message, parse_message
from app.observability.metrics import Metrics
from app.security.auth import ApiKeyAuthenticator, Authenticator
from app.security.gate import Caller, Gate, Refusal, Slot
from app.security.keys import read_key_file
from app.security.limits import Limits
from app.security.origin import OriginPolicy
from app.security.ratelimit import TokenBuckets
from tests.conftest import ROOT

KEY_A, KEY_B = "a-key-0123456789abcdef", "b-key-0123456789abcdef"
DEFAULTS = Limits(rate=20.0, burst=100, initialize=600, sessions=100)  # the chart's rate: take() asks the buckets
HEADERS_A = {"authorization": f"Bearer {KEY_A}", "host": "127.0.0.1"}
TOOLS_CALL = parse_message(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo"}}')
INITIALIZE = parse_message(b'{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}')


class CountingClock:
    """A monotonic clock that stands still and counts its reads: the API key authenticator reads it exactly once
    each time it asks whether the key file is due to be looked at again (at most once a second)."""

    def __init__(self) -> None:
        self.now, self.reads = 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def looks(self) -> int:
        """The reads since the last call: how often the key file's freshness was checked."""
        reads, self.reads = self.reads, 0
        return reads


def gate_with(key_file: Path, clock: CountingClock, *, gate_clock: Callable[[], float] = time.monotonic) -> Gate:
    """A gate over ``key_file``, its authenticator on ``clock``; the gate's own clock (how old an admission is)
    is ``gate_clock``, whose reads ``clock.looks()`` does not count unless it is ``clock`` too."""
    keys = ApiKeyAuthenticator(read_key_file(key_file), source=key_file, clock=clock)
    clock.looks()  # (made: not a request)
    return Gate(
        authenticator=Authenticator(keys),
        origins=OriginPolicy(bind_host="127.0.0.1", allowed_hosts=[], allowed_origins=[]),
        metrics=Metrics("test"),
        max_message_bytes=1000,
        defaults=DEFAULTS,
        limiter=TokenBuckets(DEFAULTS.rate, DEFAULTS.burst),
        clock=gate_clock,
    )


async def admitted(gate: Gate, headers: dict[str, str] = HEADERS_A) -> Caller:
    caller = await gate.admit(headers, "127.0.0.1")
    assert isinstance(caller, Caller), caller
    return caller


async def http_request(gate: Gate, message: Message) -> Refusal | None:
    """What the streamable HTTP transport asks of the gate for one POST: admit, screen (the rate token and the
    scopes), and for an initialize what the protocol core asks before it opens the session."""
    caller = await admitted(gate)
    refused = await gate.screen(caller, message)
    if refused is None and message.method == "initialize":
        refused = gate.may_initialize(caller)
        assert gate.session_quota(caller) == DEFAULTS.sessions
    return refused


def test_an_http_request_looks_at_the_key_file_once_whether_a_tools_call_or_an_initialize(tmp_path: Path) -> None:
    key_file, clock = tmp_path / "keys", CountingClock()
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock)

    async def scenario() -> list[int]:
        looks = []
        for message in (TOOLS_CALL, INITIALIZE, TOOLS_CALL):
            assert await http_request(gate, message) is None
            looks.append(clock.looks())
        clock.now = 5.0  # due: the file is read again (unchanged), still within the request's one look
        assert await http_request(gate, TOOLS_CALL) is None
        return [*looks, clock.looks()]

    assert asyncio.run(scenario()) == [1, 1, 1, 2]  # (a look that is due reads the clock twice: then, and since)


def test_a_connection_that_stays_open_looks_at_the_key_file_once_per_message_and_is_cut_once_its_key_leaves(
    tmp_path: Path,
) -> None:
    key_file, clock = tmp_path / "keys", CountingClock()
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock)

    async def scenario() -> tuple[list[int], Refusal | None]:
        caller = await admitted(gate)
        assert isinstance(gate.hold(caller, "websocket"), Slot)
        clock.looks()
        looks = []
        for _ in range(3):
            assert await gate.screen(caller, TOOLS_CALL) is None
            looks.append(clock.looks())
        key_file.write_text(f"b * {KEY_B}\n")
        clock.now = 2.0
        return looks, await gate.screen(caller, TOOLS_CALL)

    looks, refused = asyncio.run(scenario())
    assert looks == [1, 1, 1]
    assert refused is not None
    assert refused.closes == "credential_revoked"
    assert refused.status == 401


def test_an_http_request_whose_key_left_the_file_while_it_was_read_is_refused_once_the_change_is_seen(
    tmp_path: Path,
) -> None:
    key_file, clock = tmp_path / "keys", CountingClock()
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock)

    async def scenario() -> Refusal | None:
        a = await admitted(gate)  # ... and its body is slow to come
        key_file.write_text(f"b * {KEY_B}\n")
        clock.now = 2.0
        await admitted(gate, {"authorization": f"Bearer {KEY_B}", "host": "127.0.0.1"})  # reads the file again
        refused = await gate.admit(HEADERS_A, "127.0.0.1")
        assert isinstance(refused, Refusal)
        assert refused.status == 401
        return await gate.screen(a, TOOLS_CALL)

    refused = asyncio.run(scenario())
    assert refused is not None
    assert refused.closes == "credential_revoked"


def test_a_request_whose_body_came_long_after_its_admission_is_screened_against_the_key_file_as_it_is_now(
    tmp_path: Path,
) -> None:
    """Admitted, then a body that takes 20 s (within the body deadline) while the key leaves the file and no other
    request looks at it: the screening looks at the file itself (its admission's look is too old to stand for it)."""
    key_file, clock = tmp_path / "keys", CountingClock()
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock, gate_clock=clock)

    async def scenario() -> Refusal | None:
        a = await admitted(gate)
        key_file.write_text(f"b * {KEY_B}\n")
        clock.now = 20.0
        return await gate.screen(a, TOOLS_CALL)

    refused = asyncio.run(scenario())
    assert refused is not None
    assert refused.closes == "credential_revoked"


def test_a_keys_limits_are_built_once_per_version_of_the_key_file(tmp_path: Path) -> None:
    key_file, clock = tmp_path / "keys", CountingClock()
    key_file.write_text(f"a * {KEY_A} burst=2\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock)
    a = asyncio.run(admitted(gate))
    first = gate.limits(a)
    assert first == Limits(rate=20.0, burst=2, initialize=600, sessions=100)
    assert gate.limits(a) is first
    assert gate.limits(Caller("key:a")) is first  # a caller made without the key object: found by its name
    key_file.write_text(f"a * {KEY_A} burst=3\nb * {KEY_B}\n")
    clock.now = 2.0
    second = gate.limits(a)
    assert second == Limits(rate=20.0, burst=3, initialize=600, sessions=100)
    assert gate.limits(a) is second
    assert gate.limits(Caller("anonymous", address="10.0.0.1")) is gate.limits(Caller("anonymous"))


def test_an_api_keys_caller_is_made_once_per_version_of_the_key_file_and_address(tmp_path: Path) -> None:
    """The same key from the same address is the same caller (and the same verdict) until the key file changes;
    another address or key is another caller, and a caller that holds a connection is not handed out again."""
    key_file, clock = tmp_path / "keys", CountingClock()
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, clock)

    async def scenario() -> None:
        verdict = await gate.authenticator.authenticate(HEADERS_A)
        assert await gate.authenticator.authenticate(HEADERS_A) is verdict
        a = await admitted(gate)
        assert await admitted(gate) is a
        elsewhere = await gate.admit(HEADERS_A, "10.0.0.2")
        assert isinstance(elsewhere, Caller)
        assert elsewhere is not a
        assert (elsewhere.principal, elsewhere.address, a.address) == ("key:a", "10.0.0.2", "127.0.0.1")
        b = await admitted(gate, {"authorization": f"Bearer {KEY_B}", "host": "127.0.0.1"})
        assert b.principal == "key:b"
        assert await admitted(gate) is not a  # (the last one made was b's)
        key_file.write_text(f"a * {KEY_A} burst=3\nb * {KEY_B}\n")
        clock.now = 2.0
        changed = await admitted(gate)
        assert await gate.authenticator.authenticate(HEADERS_A) is not verdict
        assert changed.generation == a.generation + 1
        assert await admitted(gate) is changed
        assert isinstance(gate.hold(changed, "websocket"), Slot)
        assert await admitted(gate) is not changed

    asyncio.run(scenario())


def test_the_gate_loads_neither_redis_nor_jwt_support(tmp_path: Path) -> None:
    probe = (
        "import json, sys\n"
        "import app.security.gate, app.security.auth, app.security.ratelimit\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'jwt', 'cryptography'})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
