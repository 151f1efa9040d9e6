"""What a tool worker writes reaches the server's log as records of ``erlmcp.worker``, one a line, never raw: the
relay of one output pipe (lines, the cut, the budget, the pace) and the pool's workers (which call a line is from,
a dying worker's last words, a flood, a huge line, a process that keeps the pipe)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from app.runtime.output import MAX_LINE_BYTES, LineBudget, OutputRelay, Writer
from app.runtime.pool import WorkerCrashed, WorkerPool
from tests.app.runtime.test_pool import run
from tests.conftest import rss_mib

pytestmark = pytest.mark.slow

OUT = "tests.app.runtime.output_functions"


def write_all(fd: int, pieces: Sequence[bytes]) -> None:
    try:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


Record = MutableMapping[str, Any]


def relay(pieces: Sequence[bytes], *, budget: LineBudget | None = None, **options: Any) -> list[Record]:
    """Write ``pieces`` into a pipe (from a thread, as a worker would) and relay it to the end; the records."""

    async def main() -> None:
        read_fd, write_fd = os.pipe()
        output = OutputRelay(read_fd, Writer(4242, "pkg.tools:fetch", "fetch"), budget or LineBudget(0, 10**6),
                             **options)  # fmt: skip
        relaying = asyncio.create_task(output.run())
        await asyncio.to_thread(write_all, write_fd, pieces)
        async with asyncio.timeout(20):
            await relaying

    with capture_logs() as records:
        asyncio.run(main())
    return records


def test_each_line_is_one_warning_record_naming_the_worker_and_its_call() -> None:
    records = relay([b"first line\r\n\n   \nsecond \xff line\n  indented", b" more\nthe last, without newline"])

    assert [r["event"] for r in records] == ["first line", "second \ufffd line", "  indented more",
                                             "the last, without newline"]  # fmt: skip
    assert all(r["log_level"] == "warning" for r in records)
    assert all((r["pid"], r["function"], r["tool"]) == (4242, "pkg.tools:fetch", "fetch") for r in records)
    assert not any("cut_bytes" in r for r in records)


def test_a_line_over_the_cap_is_cut_before_the_word_the_cut_falls_in() -> None:
    long = b"token: " + b"a" * 40 + b" " + b"SECRETSECRETSECRET" + b"z" * 1000
    word = b"y" * 100
    records = relay([long[:30], long[30:500], long[500:] + b"\nnext\n" + word + b"\n"], max_line_bytes=64)

    assert [(r["event"], r.get("cut_bytes")) for r in records] == [
        ("token: " + "a" * 40, len(long) - 48),  # kept up to the space before the word the cut fell in
        ("next", None),
        ("", 100),  # one word, longer than the cap: nothing of it is kept
    ]


def test_lines_past_the_budget_are_dropped_and_counted_and_the_count_is_logged() -> None:
    budget = LineBudget(0, 5)
    records = relay([b"".join(b"line %d\n" % n for n in range(1000))], budget=budget)

    assert [r["event"] for r in records[:5]] == [f"line {n}" for n in range(5)]
    assert len(records) == 6
    assert records[5]["dropped_lines"] == 995
    assert records[5]["pid"] == 4242
    assert "dropped" in records[5]["event"]
    assert relay([b"still nothing\n"], budget=budget)[0]["dropped_lines"] == 1  # the budget is spent


def test_the_budget_grants_its_burst_then_refills_at_its_rate() -> None:
    now = [0.0]
    budget = LineBudget(4, 3, clock=lambda: now[0])
    assert budget.take(10) == 3
    assert budget.take(1) == 0
    now[0] += 0.5
    assert budget.take(10) == 2
    now[0] += 100
    assert budget.take(10) == 3  # at most the burst is saved up
    with pytest.raises(ValueError, match="per_second and burst must be 0 or more"):
        LineBudget(-1, 3)


def test_a_flood_is_read_no_faster_than_the_pace_until_the_worker_has_exited() -> None:
    rate = 4 * 1024 * 1024

    async def main() -> tuple[float, float]:
        read_fd, write_fd = os.pipe()
        output = OutputRelay(read_fd, Writer(1), LineBudget(0, 0), read_bytes_per_second=rate)
        relaying = asyncio.create_task(output.run())
        started = time.monotonic()
        paced = asyncio.create_task(asyncio.to_thread(write_all, os.dup(write_fd), [b"z\n" * (3 * rate // 4)]))
        async with asyncio.timeout(20):
            await paced
        paced_seconds = time.monotonic() - started
        output.finish()  # the worker exited: what is left goes at once
        started = time.monotonic()
        async with asyncio.timeout(20):
            await asyncio.to_thread(write_all, write_fd, [b"z\n" * (5 * rate)])
            await relaying
        return paced_seconds, time.monotonic() - started

    with capture_logs():
        paced, unpaced = asyncio.run(main())
    assert paced >= 1.0  # 6 MiB at 4 MiB a second, 0.4 MiB of it ahead of the pace
    assert unpaced < 10  # 40 MiB, which the pace would have spread over 10 s: faster than the pace allows


def test_what_a_tool_prints_is_logged_under_its_worker_call_and_tool_and_the_protocol_is_intact() -> None:
    async def scenario(pool: WorkerPool) -> tuple[int, str]:
        pid = await pool.call(f"{OUT}:say", {"stdout": ["said on stdout"], "stderr": ["said on stderr"]},
                              tool="greeter")  # fmt: skip
        return pid, await pool.call("tests.app.runtime.functions:chatty", {})  # raw frame bytes on fd 1 too

    with capture_logs() as records:
        pid, chatty = run(scenario, size=1)
    assert chatty == "done, stdin gave ''"
    said = {r["event"]: r for r in records if r.get("pid") == pid and r["event"].startswith("said on")}
    assert set(said) == {"said on stdout", "said on stderr"}
    assert all((r["function"], r["tool"], r["log_level"]) == (f"{OUT}:say", "greeter", "warning")
               for r in said.values())  # fmt: skip
    hello = [r for r in records if r["event"] == "hello from the tool"]
    assert hello
    assert hello[0]["function"] == "tests.app.runtime.functions:chatty"
    assert "tool" not in hello[0]  # the call did not name it
    assert [r["cut_bytes"] for r in records if "cut_bytes" in r] == [100_000 + 21]  # the 100 kB line, and fd 1's


def test_a_dying_worker_s_last_words_are_logged_before_its_death() -> None:
    async def scenario(pool: WorkerPool) -> None:
        with pytest.raises(WorkerCrashed):
            await pool.call(f"{OUT}:last_words", {"text": "fatal: the extension crashed", "code": 3})

    with capture_logs() as records:
        run(scenario, size=1)
    events = [r["event"] for r in records]
    words = events.index("fatal: the extension crashed")
    death = events.index("tool worker died; a fresh one replaces it")
    assert words < death
    assert records[words]["pid"] == records[death]["pid"]


def test_the_pool_logs_at_most_its_budget_of_lines_whichever_worker_writes_them() -> None:
    async def scenario(pool: WorkerPool) -> None:
        await pool.call(f"{OUT}:flood", {"lines": 5000})
        with pytest.raises(WorkerCrashed):
            await pool.call(f"{OUT}:last_words", {"text": "dying words", "code": 1})
        await pool.call(f"{OUT}:say", {"stdout": ["a fresh worker"], "stderr": []})

    with capture_logs() as records:
        run(scenario, size=1, output_lines_burst=50, output_lines_per_second=0)
    logged = [r["event"] for r in records if "dropped_lines" not in r and r.get("pid")
              and str(r["event"]).startswith(("flood", "dying", "a fresh"))]  # fmt: skip
    assert logged == [f"flood {n}" for n in range(50)]  # a fresh worker gets no fresh allowance
    assert sum(r["dropped_lines"] for r in records if "dropped_lines" in r) == 4950 + 2


def test_a_huge_line_costs_the_server_no_memory() -> None:
    async def scenario(pool: WorkerPool) -> tuple[str, float]:
        await pool.call(f"{OUT}:say", {"stdout": ["warm"], "stderr": []})
        before = rss_mib(os.getpid())
        written = await pool.call(f"{OUT}:one_long_line", {"megabytes": 96})
        return written, rss_mib(os.getpid()) - before

    with capture_logs() as records:
        written, grown = run(scenario, size=1, memory_limit_mb=256)
    assert written == "written"
    assert grown < 16, f"the server grew by {grown:.0f} MiB"
    cut = [r for r in records if "cut_bytes" in r]
    assert [(r["event"], r["cut_bytes"]) for r in cut] == [("", 96 * 1024 * 1024)]
    assert any(r["event"] == "after the long line" for r in records)
    assert MAX_LINE_BYTES == 4096


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_process_that_keeps_the_output_pipe_holds_up_neither_the_worker_s_end_nor_the_pool_s_close(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "escaped.pid"

    async def scenario(pool: WorkerPool) -> tuple[float, int]:
        call = asyncio.create_task(pool.call(f"{OUT}:escape_and_sleep", {"pid_file": str(pid_file)}))
        while not pid_file.exists() or not pid_file.read_text():
            await asyncio.sleep(0.05)
        started = time.monotonic()
        call.cancel()  # kills the worker's group, which the escaped process has left
        with pytest.raises(asyncio.CancelledError):
            await call
        return time.monotonic() - started, await pool.call(f"{OUT}:say", {"stdout": [], "stderr": []})

    fds = open_fds()
    started = time.monotonic()
    try:
        ended_in, _ = run(scenario, size=1)
        assert ended_in < 5  # the end of the worker waits a second at most for its output's end
        assert time.monotonic() - started < 30  # the pool closed, though the escaped process sleeps for 60 s
        assert open_fds() == fds  # the pool's close let go of the pipe the escaped process holds
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_the_constructor_checks_the_output_limits() -> None:
    with pytest.raises(ValueError, match="output_line_bytes"):
        WorkerPool(size=1, memory_limit_mb=None, output_line_bytes=0)
    with pytest.raises(ValueError, match="output_lines_per_second and output_lines_burst must be 0 or more"):
        WorkerPool(size=1, memory_limit_mb=None, output_lines_per_second=-1)
