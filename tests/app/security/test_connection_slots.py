"""The gate's connection slots (the per-principal cap on long-lived connections) and its check that a connection's
credential is still valid (a revoked key, an expired token). The real-server behaviour, door by door, is in
tests/security/test_a_principal_holds_a_bounded_number_of_connections.py and
tests/security/test_a_revoked_key_loses_its_open_connections.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.jsonrpc import RATE_LIMITED, parse_message
from app.observability.metrics import Metrics
from app.security.auth import ApiKeyAuthenticator, Authenticator
from app.security.gate import Caller, Gate, Refusal, Slot
from app.security.keys import parse_key_file
from app.security.limits import Limits
from app.security.origin import OriginPolicy

KEY_A, KEY_B = "a-key-0123456789abcdef", "b-key-0123456789abcdef"
DEFAULTS = Limits(rate=0, burst=100, initialize=600, sessions=100)


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gate_with(key_file: Path, *, cap: int, clock: Clock | None = None, wall: Clock | None = None) -> Gate:
    clock = clock or Clock()
    keys = ApiKeyAuthenticator(parse_key_file(key_file.read_text()), source=key_file, clock=clock)
    return Gate(
        authenticator=Authenticator(keys),
        origins=OriginPolicy(bind_host="127.0.0.1", allowed_hosts=[], allowed_origins=[]),
        metrics=Metrics("test"),
        max_message_bytes=1000,
        defaults=DEFAULTS,
        max_connections=cap,
        wall_clock=wall or Clock(),
    )


def admitted(gate: Gate, key: str) -> Caller:
    caller = asyncio.run(gate.admit({"authorization": f"Bearer {key}", "host": "127.0.0.1"}, "127.0.0.1"))
    assert isinstance(caller, Caller), caller
    return caller


def refused_count(gate: Gate, transport: str, reason: str) -> float:
    value = gate._metrics.registry.get_sample_value(
        "erlmcp_connections_refused_total", {"transport": transport, "reason": reason}
    )
    return value or 0.0


def test_a_client_holds_at_most_the_cap_and_a_released_slot_is_free_again(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, cap=2)
    a, b = admitted(gate, KEY_A), admitted(gate, KEY_B)
    first, second = gate.hold(a, "sse"), gate.hold(a, "tcp")
    assert isinstance(first, Slot)
    assert isinstance(second, Slot)
    over = gate.hold(a, "websocket")
    assert isinstance(over, Refusal)
    assert over.status == 429
    assert over.headers["Retry-After"].isdigit()
    assert over.error.code == RATE_LIMITED
    assert "holds 2 open connections" in over.error.message
    assert refused_count(gate, "websocket", "per_principal_cap") == 1
    assert isinstance(gate.hold(b, "websocket"), Slot)  # another principal has slots of its own
    first.release()
    first.release()  # a second release frees nothing more
    assert isinstance(gate.hold(a, "websocket"), Slot)
    assert isinstance(gate.hold(a, "websocket"), Refusal)


def test_anonymous_callers_are_counted_per_address_and_a_cap_of_zero_is_no_cap(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"a * {KEY_A}\n")
    gate = gate_with(key_file, cap=1)
    here, there = Caller("anonymous", address="10.0.0.1"), Caller("anonymous", address="10.0.0.2")
    assert isinstance(gate.hold(here, "tcp"), Slot)
    assert isinstance(gate.hold(here, "tcp"), Refusal)
    assert isinstance(gate.hold(there, "tcp"), Slot)
    unbounded = gate_with(key_file, cap=0)
    assert all(isinstance(unbounded.hold(here, "sse"), Slot) for _ in range(1000))


def test_a_connection_whose_key_left_the_file_or_changed_its_secret_is_revoked(tmp_path: Path) -> None:
    key_file, clock = tmp_path / "keys", Clock()
    key_file.write_text(f"a * {KEY_A}\nb * {KEY_B}\n")
    gate = gate_with(key_file, cap=0, clock=clock)
    a, b = admitted(gate, KEY_A), admitted(gate, KEY_B)
    assert gate.revoked(a) is None
    assert gate.revoked(b) is None
    key_file.write_text(f"b * {KEY_B}-rotated\n")  # a taken out, b given another secret
    clock.now = 2.0  # the file is looked at again at most once a second
    for caller in (a, b):
        refusal = gate.revoked(caller)
        assert refusal is not None, caller
        assert refusal.closes == "credential_revoked", refusal
        assert refusal.status == 401
        assert "revoked" in refusal.error.message
        assert 'error="invalid_token"' in refusal.headers["WWW-Authenticate"]  # RFC 6750: a 401 says how
    ping = parse_message(b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
    screened = asyncio.run(gate.screen(a, ping))
    assert screened is not None
    assert screened.closes == "credential_revoked"
    assert gate.revoked(Caller("anonymous", address="10.0.0.1")) is None


def test_a_connection_whose_token_expired_is_refused_at_its_next_message(tmp_path: Path) -> None:
    key_file, wall = tmp_path / "keys", Clock(1_000.0)
    key_file.write_text(f"a * {KEY_A}\n")
    gate = gate_with(key_file, cap=0, wall=wall)
    token = Caller("jwt:0123456789abcdef", expires_at=1_010.0)
    assert gate.revoked(token) is None
    wall.now = 1_010.0
    refusal = gate.revoked(token)
    assert refusal is not None
    assert refusal.closes == "credential_expired"
    assert "expired" in refusal.error.message
    assert 'error="invalid_token"' in refusal.headers["WWW-Authenticate"]
    gate.cut("tcp", refusal)
    assert refused_count(gate, "tcp", "credential_expired") == 1
