from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

from app.sessions import SessionLimitError, SessionStore

# Measured: 10,000 idle sessions take about 12 MiB (1.3 kB each; run with -s to see it); the budget is 25 MiB.
BUDGET_BYTES = 25 * 1024 * 1024


def new(store: SessionStore, principal: str = "key:1") -> str:
    capabilities: dict[str, object] = {"sampling": {}, "elicitation": {}}
    client = {"name": "client", "version": "1.0.0"}
    created = store.create(protocol_version="2025-11-25", client_info=client, client_capabilities=capabilities,
                           principal=principal)  # fmt: skip
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
            await store.create(protocol_version="2025-11-25", client_info={"name": "client", "version": "1.0.0"},
                               client_capabilities={"sampling": {}}, principal=f"key:{i % 50}")  # fmt: skip

    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = SessionStore(max_sessions=10_000, idle_seconds=1800)
        asyncio.run(fill(store))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    print(f"10,000 idle sessions: {used / 1024 / 1024:.1f} MiB ({used / 10_000:.0f} bytes each)")
    assert len(store) == 10_000
    assert used < BUDGET_BYTES
