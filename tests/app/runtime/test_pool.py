"""The worker-process pool, with real worker processes: values, failures that cost one call only, deadlines and
cancellation that kill the worker, the memory limit, concurrency, and closing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from structlog.testing import capture_logs

from app.runtime.pool import ToolFailed, WorkerCrashed, WorkerError, WorkerOutOfMemory, WorkerPool
from tests.conftest import rss_mib

pytestmark = pytest.mark.slow

F = "tests.app.runtime.functions"
T = TypeVar("T")


def run(scenario: Callable[[WorkerPool], Awaitable[T]], *, size: int = 2, memory_limit_mb: int | None = 256,
        uvloop_loop: bool = False, **options: Any) -> T:  # fmt: skip
    """Run ``scenario`` with a fresh pool on a fresh event loop, and close the pool after."""

    async def main() -> T:
        pool = WorkerPool(size=size, memory_limit_mb=memory_limit_mb, **options)
        try:
            return await scenario(pool)
        finally:
            await pool.aclose(grace_seconds=0.5)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop_loop else None) as runner:
        return runner.run(main())


def gone(pid: int) -> bool:
    """The process no longer exists (reaped), or is a zombie waiting for init (a tool's own child, orphaned)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def gone_within(pid: int, seconds: float = 10.0) -> bool:
    """The process is gone within ``seconds``: for a process nobody here waits for (a tool's own child), which
    SIGKILL ends when the kernel next runs it, a moment after ``killpg`` returns on a busy machine."""
    deadline = time.monotonic() + seconds
    while not gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def test_sync_and_async_functions_return_their_values_as_json() -> None:
    async def scenario(pool: WorkerPool) -> list[Any]:
        return [
            await pool.call(f"{F}:add", {"a": 2, "b": 3}),
            await pool.call(f"{F}:add_later", {"a": 4, "b": 5}),
            await pool.call(f"{F}:point", {"x": 1, "y": 2}),
            await pool.call(f"{F}:stamp", {"seconds": 0}),
            await pool.call(f"{F}:Tools.nested", {"word": "dotted"}),
        ]

    added, added_later, point, stamp, nested = run(scenario)
    assert (added, added_later, point, nested) == (5, 9, {"x": 1, "y": 2}, "DOTTED")
    assert stamp["at"] == "2024-01-02T03:04:05"  # a dataclass holding a datetime
    assert stamp["pid"] != os.getpid()


def test_a_worker_that_calls_os_exit_fails_only_its_own_call_and_is_replaced() -> None:
    async def scenario(pool: WorkerPool) -> tuple[list[Any], int, int]:
        outcomes = await asyncio.gather(
            pool.call(f"{F}:exit_now", {"code": 3}),
            *(pool.call(f"{F}:stamp", {"seconds": 0.3}) for _ in range(3)),
            return_exceptions=True,
        )
        return outcomes, await pool.call(f"{F}:add", {"a": 1, "b": 1}), pool.live_workers

    (crashed, *others), after, live = run(scenario, size=4)
    assert isinstance(crashed, WorkerCrashed)
    assert crashed.returncode == 3
    assert str(crashed) == "the tool's worker process died (exit code 3)"
    assert all(isinstance(other, dict) and other["ended"] - other["started"] >= 0.3 for other in others)
    assert after == 2
    assert live <= 4


def test_a_segfault_fails_the_call_naming_the_signal_and_the_next_call_gets_a_fresh_worker() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, BaseException, int]:
        first = await pool.call(f"{F}:pid", {})
        try:
            await pool.call(f"{F}:segfault", {})
        except WorkerCrashed as exc:
            crash: BaseException = exc
        else:
            raise AssertionError("the segfault went unnoticed")
        return first, crash, await pool.call(f"{F}:pid", {})

    first, crash, second = run(scenario, size=1)
    assert str(crash) == "the tool's worker process died (killed by signal SIGSEGV)"
    assert second != first
    assert gone(first)


def test_unbounded_allocation_fails_with_out_of_memory_and_leaves_the_server_and_other_calls_alone() -> None:
    async def scenario(pool: WorkerPool) -> tuple[float, Sequence[Any], float, int]:
        await asyncio.gather(*(pool.call(f"{F}:add", {"a": 0, "b": 0}) for _ in range(3)))  # warm: 3 workers
        before = rss_mib()
        outcomes = await asyncio.gather(
            pool.call(f"{F}:exhaust_memory", {}),
            pool.call(f"{F}:stamp", {"seconds": 0.3}),
            pool.call(f"{F}:stamp", {"seconds": 0.3}),
            return_exceptions=True,
        )
        return before, outcomes, rss_mib(), await pool.call(f"{F}:add", {"a": 1, "b": 2})

    before, (exhausted, *others), after, next_call = run(scenario, size=3, memory_limit_mb=256)
    assert isinstance(exhausted, WorkerOutOfMemory)
    assert str(exhausted) == "the tool ran out of memory (limit 256 MB)"
    assert all(isinstance(other, dict) for other in others)
    assert after - before < 50, f"the server's RSS grew from {before:.0f} MB to {after:.0f} MB"
    assert next_call == 3


def test_memory_that_cannot_be_mapped_is_out_of_memory_too() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, WorkerOutOfMemory]:
        fits = int(await pool.call(f"{F}:map_memory", {"megabytes": 16}))
        with pytest.raises(WorkerOutOfMemory) as raised:
            await pool.call(f"{F}:map_memory", {"megabytes": 512})
        return fits, raised.value

    fits, failure = run(scenario, size=1, memory_limit_mb=256)
    assert fits == 16 * 1024 * 1024
    assert str(failure) == "the tool ran out of memory (limit 256 MB)"


@pytest.mark.parametrize("function", ["sleep_forever", "sleep_forever_async"])
def test_a_deadline_kills_the_worker_of_a_call_that_never_ends_and_the_next_call_works(function: str) -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, tuple[int, ...], int]:
        worker = await pool.call(f"{F}:pid", {})
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await pool.call(f"{F}:{function}", {})
        assert gone(worker)  # killed and reaped before the TimeoutError arrived
        return worker, pool.pids, await pool.call(f"{F}:pid", {})

    worker, left, fresh = run(scenario, size=1)
    assert left == ()
    assert fresh != worker


def test_a_cancelled_call_kills_its_worker_and_whatever_the_tool_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"

    async def scenario(pool: WorkerPool) -> tuple[int, int]:
        worker = await pool.call(f"{F}:pid", {})
        call = asyncio.create_task(pool.call(f"{F}:spawn_and_sleep", {"pid_file": str(pid_file)}))
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.05)
        call.cancel()  # what a client's notifications/cancelled does to the request's task
        with pytest.raises(asyncio.CancelledError):
            await call
        return worker, int(pid_file.read_text())

    worker, child = run(scenario, size=1)
    assert gone(worker)  # the pool reaped it
    assert gone_within(child)


def test_failures_in_the_function_are_clear_errors_and_the_worker_lives_on() -> None:
    async def failure(pool: WorkerPool, target: str, **arguments: Any) -> ToolFailed:
        with pytest.raises(ToolFailed) as raised:
            await pool.call(target, arguments)
        return raised.value

    async def scenario(pool: WorkerPool) -> tuple[list[ToolFailed], tuple[int, ...], tuple[int, ...]]:
        await pool.call(f"{F}:pid", {})
        before = pool.pids
        failures = [
            await failure(pool, f"{F}:refuse", reason="the city must be in Europe"),
            await failure(pool, f"{F}:fail"),
            await failure(pool, "no.such.module:f"),
            await failure(pool, "os:no_such_function"),
            await failure(pool, f"{F}:NOT_CALLABLE"),
            await failure(pool, f"{F}:add", a=1),
        ]
        return failures, before, pool.pids

    failures, before, after = run(scenario, size=1)
    refused, raised, no_module, no_function, not_callable, missing_argument = failures
    assert (refused.kind, str(refused)) == ("tool_error", "the city must be in Europe")
    assert (raised.kind, raised.type) == ("exception", "ValueError")
    assert str(raised) == "the tool raised ValueError: the input was not what I expected"
    assert no_module.kind == "import"
    assert str(no_module) == "cannot import the tool function 'no.such.module:f': No module named 'no'"
    assert no_function.kind == "import"
    assert "'os:no_such_function'" in str(no_function)
    assert "no attribute 'no_such_function'" in str(no_function)
    assert (not_callable.kind, str(not_callable)) == ("import", f"the tool function '{F}:NOT_CALLABLE' is not callable")
    assert (missing_argument.kind, missing_argument.type) == ("exception", "TypeError")
    assert after == before  # the same worker served every call


def test_print_and_stdin_in_a_tool_do_not_break_the_protocol() -> None:
    async def scenario(pool: WorkerPool) -> tuple[str, int]:
        return await pool.call(f"{F}:chatty", {}), await pool.call(f"{F}:add", {"a": 1, "b": 2})

    with capture_logs() as records:
        assert run(scenario, size=1) == ("done, stdin gave ''", 3)
    said = [record for record in records if record.get("function") == f"{F}:chatty"]
    lines = [record["event"] for record in said]
    assert "hello from the tool" in lines  # a record of the server's log (erlmcp.worker), never raw stderr
    assert "to stderr" in lines
    # The 100 kB line (with the raw bytes written on fd 1 at its end) is logged cut, saying so, never whole: one
    # word, so the cut takes it all (a cut word could be the start of a credential the redactor cannot see whole).
    [long_line] = [record for record in said if record.get("cut_bytes")]
    assert long_line["cut_bytes"] >= 100_000 - 4096
    assert "raw bytes on fd 1" not in long_line["event"]


def test_a_value_that_is_not_json_fails_the_call_as_not_json() -> None:
    async def scenario(pool: WorkerPool) -> tuple[ToolFailed, int]:
        with pytest.raises(ToolFailed) as raised:
            await pool.call(f"{F}:not_json", {})
        return raised.value, await pool.call(f"{F}:add", {"a": 1, "b": 2})

    failure, after = run(scenario, size=1)
    assert failure.kind == "not_json"
    assert str(failure).startswith("the tool returned a value that is not JSON: ")
    assert "object" in str(failure)
    assert after == 3


def test_a_result_over_the_size_limit_fails_the_call_and_the_next_call_works() -> None:
    async def scenario(pool: WorkerPool) -> tuple[ToolFailed, int]:
        with pytest.raises(ToolFailed) as raised:  # 8 MB: the pipe is still full when the worker is killed
            await pool.call(f"{F}:huge", {"megabytes": 8})
        return raised.value, await pool.call(f"{F}:add", {"a": 1, "b": 2})

    failure, after = run(scenario, size=1, max_result_bytes=1024 * 1024)
    assert failure.kind == "too_large"
    assert str(failure) == "the tool's result is too large (8388617 bytes; the limit is 1048576)"
    assert after == 3


def test_a_tool_can_start_threads_under_a_256_mb_limit() -> None:
    async def scenario(pool: WorkerPool) -> int:
        return int(await pool.call(f"{F}:threads", {"count": 8}))

    assert run(scenario, size=1, memory_limit_mb=256) == 8


def test_at_most_size_workers_run_and_excess_calls_wait_their_turn() -> None:
    async def scenario(pool: WorkerPool) -> tuple[list[dict[str, Any]], int]:
        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, pool.live_workers)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        stamps = await asyncio.gather(*(pool.call(f"{F}:stamp", {"seconds": 0.3}) for _ in range(4)))
        watcher.cancel()
        return stamps, most

    stamps, most = run(scenario, size=2)
    assert most <= 2
    assert len({stamp["pid"] for stamp in stamps}) <= 2
    running, most_running = 0, 0  # sweep the calls' starts and ends: no moment had more than two running
    for _, change in sorted([(stamp["started"], 1) for stamp in stamps] + [(stamp["ended"], -1) for stamp in stamps]):
        running += change
        most_running = max(most_running, running)
    assert most_running == 2


def test_a_worker_killed_while_idle_is_replaced_without_failing_the_next_call() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, int]:
        first = await pool.call(f"{F}:pid", {})
        os.kill(first, signal.SIGKILL)
        while Path(f"/proc/{first}").exists():  # until its exit has been collected
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        return first, await pool.call(f"{F}:pid", {})

    first, second = run(scenario, size=1)
    assert second != first


def test_aclose_stops_every_worker_and_later_calls_fail_clearly() -> None:
    async def scenario(pool: WorkerPool) -> tuple[tuple[int, ...], BaseException | None]:
        await asyncio.gather(*(pool.call(f"{F}:stamp", {"seconds": 0.1}) for _ in range(3)))
        busy = asyncio.create_task(pool.call(f"{F}:sleep_forever", {}))
        await asyncio.sleep(0.2)
        pids = pool.pids
        await pool.aclose(grace_seconds=0.2)
        await pool.aclose()  # again: nothing more to do
        outcome = (await asyncio.gather(busy, return_exceptions=True))[0]
        with pytest.raises(WorkerError, match="^the worker pool is closed$"):
            await pool.call(f"{F}:add", {"a": 1, "b": 2})
        assert pool.live_workers == 0
        return pids, outcome

    pids, busy_outcome = run(scenario, size=3)
    assert len(pids) == 3
    assert all(gone(pid) for pid in pids)
    assert isinstance(busy_outcome, WorkerError)
    assert str(busy_outcome) == "the worker pool is closed"


def test_the_pool_works_on_uvloop() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, BaseException | None, int]:
        worker = await pool.call(f"{F}:add_later", {"a": 1, "b": 2})
        outcome = (await asyncio.gather(pool.call(f"{F}:exit_now", {"code": 4}), return_exceptions=True))[0]
        # A worker up and running again first: a call cancelled while its worker is still starting lets the start
        # finish (tests/app/runtime/test_cancel_restarts.py), and on a slow machine a start takes more than 0.3 s.
        assert await pool.call(f"{F}:add", {"a": 0, "b": 0}) == 0
        try:
            async with asyncio.timeout(0.3):
                await pool.call(f"{F}:sleep_forever", {})
        except TimeoutError:
            pass
        assert pool.live_workers == 0
        return worker, outcome, await pool.call(f"{F}:add", {"a": 2, "b": 2})

    added, crashed, after = run(scenario, size=1, uvloop_loop=True)
    assert added == 3
    assert str(crashed) == "the tool's worker process died (exit code 4)"
    assert after == 4


def test_a_worker_that_cannot_start_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")

    async def failing(pool: WorkerPool) -> WorkerError:
        with pytest.raises(WorkerError) as raised:
            await pool.call(f"{F}:add", {"a": 1, "b": 2})
        assert pool.live_workers == 0
        return raised.value

    assert str(run(failing)) == "the tool's worker process failed to start (exit code 1); the server log says why"

    silent = tmp_path / "silent"
    silent.write_text("#!/bin/sh\nexec sleep 60\n")
    silent.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(silent))
    assert str(run(failing, start_timeout_seconds=0.5)) == "the tool's worker process did not start within 0.5 s"


def test_the_constructor_checks_its_limits_and_needs_no_event_loop() -> None:
    with pytest.raises(ValueError, match="at least 64"):
        WorkerPool(size=1, memory_limit_mb=32)
    with pytest.raises(ValueError, match="at least 1"):
        WorkerPool(size=0, memory_limit_mb=None)
    pool = WorkerPool(size=2, memory_limit_mb=64)
    assert (pool.live_workers, pool.pids) == (0, ())
