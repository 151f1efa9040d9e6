from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from app.sessions import SessionLimitError, SessionQuotaError, SessionStore

# Measured: 10,000 idle sessions take about 12 MiB (1.3 kB each; run with -s to see it); the budget is 25 MiB.
BUDGET_BYTES = 25 * 1024 * 1024


def new(store: SessionStore, principal: str | None = "key:1", owner: str | None = None) -> str:
    capabilities: dict[str, object] = {"sampling": {}, "elicitation": {}}
    client = {"name": "client", "version": "1.0.0"}
    created = store.create(
        protocol_version="2025-11-25",
        client_info=client,
        client_capabilities=capabilities,
        principal=principal,
        owner=owner,
    )
    return asyncio.run(created).id


def get(store: SessionStore, session_id: str) -> object:
    return asyncio.run(store.get(session_id))


def test_session_ids_are_long_random_and_visible_ascii() -> None:
    store = SessionStore(max_sessions=100, idle_seconds=60)
    ids = {new(store) for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) >= 22 and all(0x21 <= ord(c) <= 0x7E for c in i) for i in ids)  # 16 random bytes


def test_an_idle_session_is_evicted_after_its_timeout() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=10, idle_seconds=30, clock=lambda: now[0])
    session_id = new(store)
    now[0] = 29
    assert get(store, session_id) is not None  # touched: idle time starts again
    now[0] = 58
    assert get(store, session_id) is not None
    now[0] = 89
    assert get(store, session_id) is None


def test_the_cap_refuses_new_sessions_until_idle_ones_expire() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=2, idle_seconds=10, clock=lambda: now[0])
    new(store)
    new(store)
    with pytest.raises(SessionLimitError):
        new(store)
    now[0] = 11
    new(store)
    assert len(store) == 1


def test_ten_thousand_idle_sessions_stay_within_the_memory_budget() -> None:
    async def fill(store: SessionStore) -> None:
        for i in range(10_000):
            await store.create(
                protocol_version="2025-11-25",
                client_info={"name": "client", "version": "1.0.0"},
                client_capabilities={"sampling": {}},
                principal=f"key:{i % 50}",
            )

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = SessionStore(max_sessions=10_000, idle_seconds=1800, max_sessions_per_owner=200)  # 50 owners
        asyncio.run(fill(store))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"10,000 idle sessions: {used / 1024 / 1024:.1f} MiB ({used / 10_000:.0f} bytes each)")
    assert len(store) == 10_000
    assert used < BUDGET_BYTES


# -- the per-client quota -------------------------------------------------------------------------------------


def test_a_client_at_its_quota_is_refused_naming_the_setting_and_another_client_is_not() -> None:
    store = SessionStore(max_sessions=100, idle_seconds=60, max_sessions_per_owner=2)
    new(store, "key:a")
    new(store, "key:a")
    with pytest.raises(SessionQuotaError) as refused:
        new(store, "key:a")
    assert isinstance(refused.value, SessionLimitError)  # what the transports already catch
    assert (refused.value.limit, refused.value.owner) == (2, "key:a")
    assert str(refused.value) == (
        "this client already holds 2 sessions, the most allowed per client (ERLMCP_MAX_SESSIONS_PER_PRINCIPAL); "
        "end one (DELETE /mcp, or close its connection) or let one expire"
    )
    new(store, "key:b")
    assert len(store) == 3


def test_the_quota_counts_against_the_owner_when_given_else_the_principal() -> None:
    store = SessionStore(max_sessions=100, idle_seconds=60, max_sessions_per_owner=1)
    new(store, principal="anonymous", owner="ip:10.0.0.1")
    new(store, principal="anonymous", owner="ip:10.0.0.2")  # another address: another client
    with pytest.raises(SessionQuotaError, match="already holds 1 sessions"):
        new(store, principal="anonymous", owner="ip:10.0.0.1")
    new(store, principal="ip:10.0.0.3")  # no owner: the principal's quota
    with pytest.raises(SessionQuotaError):
        new(store, principal="key:other", owner="ip:10.0.0.3")


def test_sessions_without_an_owner_or_principal_and_a_quota_of_zero_are_not_limited() -> None:
    store = SessionStore(max_sessions=100, idle_seconds=60, max_sessions_per_owner=1)
    for _ in range(3):
        new(store, principal=None)
    unlimited = SessionStore(max_sessions=100, idle_seconds=60)  # max_sessions_per_owner=0 by default
    for _ in range(3):
        new(unlimited, "key:a")
    assert (len(store), len(unlimited)) == (3, 3)


def test_the_server_wide_cap_still_comes_first() -> None:
    store = SessionStore(max_sessions=1, idle_seconds=60, max_sessions_per_owner=1)
    new(store, "key:a")
    with pytest.raises(SessionLimitError) as refused:
        new(store, "key:b")
    assert not isinstance(refused.value, SessionQuotaError)


def test_a_deleted_session_frees_its_slot() -> None:
    store = SessionStore(max_sessions=100, idle_seconds=60, max_sessions_per_owner=2)
    first = new(store, "key:a")
    new(store, "key:a")
    assert asyncio.run(store.delete(first))
    new(store, "key:a")
    with pytest.raises(SessionQuotaError):
        new(store, "key:a")


def test_an_expired_session_frees_its_slot_before_any_sweep() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=100, idle_seconds=10, max_sessions_per_owner=2, clock=lambda: now[0])
    old = new(store, "key:a")
    now[0] = 5
    recent = new(store, "key:a")
    now[0] = 10.5  # the first idle past its time; the last sweep was less than a second ago
    store._swept = now[0]
    new(store, "key:a")
    assert get(store, old) is None
    assert get(store, recent) is not None
    with pytest.raises(SessionQuotaError):
        new(store, "key:a")


def test_a_session_with_a_request_in_flight_keeps_counting_as_the_sweep_keeps_it() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=100, idle_seconds=10, max_sessions_per_owner=1, clock=lambda: now[0])
    busy = asyncio.run(
        store.create(protocol_version="2025-11-25", client_info={}, client_capabilities={}, principal="key:a")
    )
    busy.in_flight["1"] = object()  # type: ignore[assignment]  # (a task in real life)
    now[0] = 60
    with pytest.raises(SessionQuotaError):
        new(store, "key:a")
    busy.in_flight.clear()
    new(store, "key:a")


def test_the_owner_index_follows_create_delete_and_expire_and_keeps_nothing_behind() -> None:
    now = [0.0]
    store = SessionStore(max_sessions=100, idle_seconds=10, max_sessions_per_owner=5, clock=lambda: now[0])
    kept = new(store, "key:a")
    dropped = new(store, "key:a")
    new(store, "key:b")
    assert {owner: len(ids) for owner, ids in store._owned.items()} == {"key:a": 2, "key:b": 1}
    asyncio.run(store.delete(dropped))
    assert store._owned["key:a"] == {kept}
    assert get(store, kept) is not None
    now[0] = 11
    assert store.expire() == 2  # both idled past their time
    assert (store._owned, len(store)) == ({}, 0)  # no empty set kept per client that went away
