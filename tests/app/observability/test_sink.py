"""The log's sink: every line of the process goes through one buffer and one writer thread to one file descriptor,
so lines stay whole and in order; a full buffer drops and counts, never blocks; ``close`` writes what is left."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from app.observability import sink as sinks
from app.observability.metrics import Metrics
from app.observability.sink import LineSink

DEADLINE = 20.0  # generous: only a hang (a put that blocks, a close that never ends) runs into it
LONG = 3600.0  # a flush interval no test waits for: only a high-water mark, flush or close writes


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def in_thread(work: object) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_a_full_buffer_counts_the_dropped_line_and_never_blocks(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe  # nobody reads: the writer thread soon stalls on the full pipe
    sink = LineSink(write_end, capacity=64 * 1024, interval=0.01)
    line = b"x" * 1000 + b"\n"

    def flood() -> None:
        for _ in range(1000):  # ~1 MB: far more than the pipe and the buffer hold
            sink.put(line)

    thread = in_thread(flood)
    thread.join(DEADLINE)
    assert not thread.is_alive(), "put blocked on a full buffer"
    assert sink.dropped > 0
    os.close(read_end)  # the reader is gone: what is left cannot be written, and close must not wait for it
    sink.close(timeout=5)


def test_the_dropped_lines_are_a_counter_in_the_metrics(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LineSink(write_end, capacity=4096, interval=LONG)
    before = sinks.install(sink)
    try:
        for _ in range(10):
            sink.put(b"y" * 1000 + b"\n")  # the fifth and later do not fit
        metrics = Metrics("test")
        dropped = metrics.registry.get_sample_value("erlmcp_log_lines_dropped_total")
    finally:
        sinks.install(before)
        sink.close(timeout=5)
    assert dropped == sink.dropped == 6


def test_once_there_is_room_again_one_warning_line_says_how_many_were_dropped(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    sink = LineSink(write_end, capacity=4096, interval=LONG)
    with capture_logs() as logged:
        for _ in range(10):
            sink.put(b"z" * 1000 + b"\n")
        sink.flush()  # written: there is room again
        sink.close(timeout=5)
    os.close(write_end)
    assert read_all(read_end).count(b"\n") == 4
    warnings = [line for line in logged if line["log_level"] == "warning"]
    assert [(line["event"], line["dropped"]) for line in warnings] == [("log lines dropped", 6)]


def test_lines_from_many_threads_arrive_whole_and_each_threads_in_order(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    received: list[bytes] = []
    reader = in_thread(lambda: received.append(read_all(read_end)))
    sink = LineSink(write_end, capacity=1 << 24, interval=0.005, high_water=4096)

    def writes(name: int) -> None:
        for number in range(2000):
            sink.put(f"{name}:{number}:".encode() + b"w" * (number % 300) + b"\n")

    threads = [in_thread(lambda name=name: writes(name)) for name in range(4)]
    for thread in threads:
        thread.join(DEADLINE)
    sink.close(timeout=DEADLINE)
    os.close(write_end)
    reader.join(DEADLINE)
    seen: dict[int, list[int]] = {name: [] for name in range(4)}
    for line in received[0].splitlines():
        name, number, filler = line.split(b":")
        assert filler == b"w" * (int(number) % 300), line[:80]
        seen[int(name)].append(int(number))
    assert seen == {name: list(range(2000)) for name in range(4)}
    assert sink.dropped == 0


def test_a_non_blocking_descriptor_and_a_slow_reader_lose_nothing(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    fcntl.fcntl(write_end, fcntl.F_SETFL, fcntl.fcntl(write_end, fcntl.F_GETFL) | os.O_NONBLOCK)  # EAGAIN, partial
    sink = LineSink(write_end, capacity=1 << 24, interval=0.005)
    for number in range(3000):
        sink.put(f"{number:08d}".encode() + b"." * 200 + b"\n")  # ~620 KB: many times the pipe's capacity
    received: list[bytes] = []
    reader = in_thread(lambda: received.append(read_all(read_end)))
    sink.close(timeout=DEADLINE)
    os.close(write_end)
    reader.join(DEADLINE)
    assert [int(line[:8]) for line in received[0].splitlines()] == list(range(3000))


def test_a_reader_that_went_away_costs_the_lines_not_the_writer(pipe: tuple[int, int]) -> None:
    read_end, write_end = pipe
    os.close(read_end)  # EPIPE on every write
    sink = LineSink(write_end, capacity=1 << 20, interval=LONG)
    for _ in range(5):
        sink.put(b"gone\n")
    sink.flush()
    sink.put(b"still taken\n")
    sink.close(timeout=5)
    assert sink.dropped == 6


def test_close_writes_every_buffered_line_and_later_lines_go_straight_out(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        sink = LineSink(fd, interval=LONG)
        for number in range(100):
            sink.put(b"%d\n" % number)
        assert path.read_bytes() == b""  # buffered: the interval is long and the high-water mark far
        sink.close(timeout=5)
        assert path.read_bytes().splitlines() == [b"%d" % number for number in range(100)]
        sink.put(b"after close\n")
        assert path.read_bytes().endswith(b"99\nafter close\n")
    finally:
        os.close(fd)


def test_a_line_written_now_is_on_the_descriptor_when_the_call_returns_after_the_lines_buffered_before_it(
    tmp_path: Path,
) -> None:
    """Every line but the access line is written at once (a warning, an error before a crash, a line a test or an
    operator waits for), after what the buffer holds, so the order stays the order they were put."""
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        sink = LineSink(fd, interval=LONG)
        sink.put(b"buffered 1\n")
        sink.put(b"buffered 2\n")
        sink.write_now(b"now\n")
        assert path.read_bytes() == b"buffered 1\nbuffered 2\nnow\n"
        sink.put(b"buffered 3\n")
        assert path.read_bytes() == b"buffered 1\nbuffered 2\nnow\n"
        sink.close(timeout=5)
        assert path.read_bytes().endswith(b"now\nbuffered 3\n")
    finally:
        os.close(fd)


def test_a_forked_child_writes_its_own_lines_at_once_never_the_parents_and_never_blocks(tmp_path: Path) -> None:
    """A tool or plugin that forks (multiprocessing's default on Linux): the child has no writer thread and may
    inherit a lock some thread of the parent held at the fork. Its lines go straight out; the parent's buffered
    lines are the parent's to write, once."""
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        sink = LineSink(fd, interval=LONG)
        sink.put(b"parent buffered\n")
        with sink._write_lock:  # as the writer thread holds it while it writes a batch
            pid = os.fork()
            if pid == 0:  # the child: out within 10 s, or killed by the alarm (a lock it waits for forever)
                try:
                    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's handler
                    signal.alarm(10)
                    sink.write_now(b"child now\n")
                    sink.put(b"child put\n")
                finally:
                    os._exit(0)  # never back into the test session
        _, status = os.waitpid(pid, 0)
        sink.close(timeout=5)
        assert os.waitstatus_to_exitcode(status) == 0, "the child blocked on a lock the fork left held"
        assert sorted(path.read_bytes().splitlines()) == [b"child now", b"child put", b"parent buffered"]
    finally:
        os.close(fd)


def test_each_write_holds_whole_lines_and_at_most_what_a_pipe_writes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipe takes a write of up to PIPE_BUF bytes whole; a longer one may be split by anything else that writes to
    stderr at the same time (faulthandler, a C library, Python's "Exception ignored"), in the middle of a JSON line.
    The stand-in: os.write wrapped to record each call's size (the kernel's atomicity is not modelled)."""
    sizes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes | memoryview) -> int:
        written = real_write(fd, data)
        sizes.append(bytes(data[:written]))
        return written

    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        sink = LineSink(fd, interval=LONG)
        lines = [b"%04d %s\n" % (number, b"x" * 95) for number in range(200)]  # 20,000 bytes
        long_line = b"y" * 10_000 + b"\n"
        for line in lines[:100]:
            sink.put(line)
        sink.put(long_line)
        for line in lines[100:]:
            sink.put(line)
        monkeypatch.setattr(os, "write", recording_write)
        sink.flush()
        monkeypatch.undo()
        sink.close(timeout=5)
        assert path.read_bytes() == b"".join([*lines[:100], long_line, *lines[100:]])
        assert all(chunk.endswith(b"\n") for chunk in sizes)
        assert [len(chunk) for chunk in sizes if len(chunk) > select.PIPE_BUF] == [len(long_line)]
    finally:
        os.close(fd)
