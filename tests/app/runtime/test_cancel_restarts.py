"""Cancellations kill workers only within each principal's allowance; past it a cancelled call is abandoned: it runs
on in its worker (which then serves the next call) until it ends, or until its time limit kills it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.runtime.budget import RestartBudget
from app.runtime.pool import WorkerPool
from tests.app.runtime.test_pool import F, gone, run

pytestmark = pytest.mark.slow


async def started_then_cancelled(pool: WorkerPool, function: str, arguments: dict[str, Any], **options: Any) -> int:
    """Call ``function`` (which must return nothing first: it runs until cancelled), cancel it once it runs in
    its worker, and return that worker's pid."""
    [before] = pool.pids or [await pool.call(f"{F}:pid", {})]
    call = asyncio.create_task(pool.call(f"{F}:{function}", arguments, **options))
    await asyncio.sleep(0.3)  # the call is in the worker (a call waits for nothing else in a one-worker pool)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    return before


def test_past_the_allowance_a_cancelled_call_keeps_its_worker_and_the_next_call_waits_for_it() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, int, int, float]:
        worker = await started_then_cancelled(pool, "stamp", {"seconds": 1.0}, principal="alice")
        assert pool.abandoned_calls == 1
        loop = asyncio.get_running_loop()
        asked = loop.time()
        after = await pool.call(f"{F}:pid", {}, principal="alice")
        return worker, after, pool.abandoned_calls, loop.time() - asked

    worker, after, abandoned, waited = run(scenario, size=1, cancel_restarts_per_minute=0)
    assert after == worker  # not killed: the abandoned call finished, its result was dropped, the worker served on
    assert abandoned == 0
    assert waited > 0.3  # the next call waited for the abandoned one to end (about 0.7 s left of its second)


def test_an_abandoned_call_is_killed_at_its_time_limit() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, bool, int]:
        worker = await started_then_cancelled(pool, "sleep_forever", {}, principal="alice", timeout_seconds=1.0)
        still_running = not gone(worker)
        async with asyncio.timeout(15):  # generous: the limit is one second after the call
            while not gone(worker):
                await asyncio.sleep(0.05)
        return worker, still_running, await pool.call(f"{F}:pid", {})

    worker, still_running, fresh = run(scenario, size=1, cancel_restarts_per_minute=0)
    assert still_running  # the cancel itself did not kill it
    assert fresh != worker


def test_the_pools_call_timeout_bounds_an_abandoned_call_that_gave_none() -> None:
    async def scenario(pool: WorkerPool) -> int:
        worker = await started_then_cancelled(pool, "sleep_forever", {}, principal="alice")
        async with asyncio.timeout(15):
            while not gone(worker):
                await asyncio.sleep(0.05)
        return worker

    assert gone(run(scenario, size=1, cancel_restarts_per_minute=0, call_timeout_seconds=1.0))


def test_each_principal_has_its_own_allowance() -> None:
    async def scenario(pool: WorkerPool) -> list[bool]:
        killed = []
        for principal in ("alice", "alice", "bob"):
            worker = await started_then_cancelled(pool, "sleep_forever", {}, principal=principal, timeout_seconds=1)
            await asyncio.sleep(0.2)  # a kill is over by now; an abandoned call runs up to its one second
            killed.append(gone(worker))
            async with asyncio.timeout(15):
                while not gone(worker):  # let an abandoned call reach its limit before the next round
                    await asyncio.sleep(0.05)
        return killed

    assert run(scenario, size=1, cancel_restarts_per_minute=1) == [True, False, True]


def test_aclose_kills_the_workers_of_abandoned_calls() -> None:
    async def scenario(pool: WorkerPool) -> int:
        worker = await started_then_cancelled(pool, "sleep_forever", {})
        assert not gone(worker)
        await pool.aclose(grace_seconds=0.2)
        assert pool.abandoned_calls == 0
        return worker

    assert gone(run(scenario, size=1, cancel_restarts_per_minute=0))


# -- the allowance itself ---------------------------------------------------------------------------------------


def test_the_allowance_is_spent_then_refills_evenly() -> None:
    now = [0.0]
    budget = RestartBudget(6, clock=lambda: now[0])
    assert [budget.take("alice") for _ in range(7)] == [True] * 6 + [False]
    assert budget.take("bob")  # another principal's allowance is whole
    now[0] += 10  # a tenth of a minute: one restart more
    assert [budget.take("alice"), budget.take("alice")] == [True, False]
    now[0] += 3600  # an hour idle saves up no more than the allowance
    assert [budget.take("alice") for _ in range(7)] == [True] * 6 + [False]


def test_no_allowance_never_kills_and_a_negative_one_is_refused() -> None:
    assert not RestartBudget(0).take(None)
    with pytest.raises(ValueError, match="0 or more"):
        RestartBudget(-1)


def test_many_principals_do_not_grow_the_allowance_without_bound() -> None:
    now = [0.0]
    budget = RestartBudget(1, clock=lambda: now[0])
    for number in range(10_000):
        budget.take(f"p{number}")
        now[0] += 0.001
    assert len(budget._spent) <= 4096


def test_a_call_cancelled_while_its_worker_starts_leaves_the_worker_to_serve_the_next_call() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, int, int]:
        for _ in range(5):  # cancel each call while its worker is still starting
            call = asyncio.create_task(pool.call(f"{F}:pid", {}, principal="alice"))
            await asyncio.sleep(0.02)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        served = await pool.call(f"{F}:pid", {}, principal="alice")
        return pool.workers_started, served, pool.live_workers

    started, served, live = run(scenario, size=1, cancel_restarts_per_minute=0)
    assert started == 1  # one worker started, whatever the cancels
    assert live == 1
    assert served > 0
