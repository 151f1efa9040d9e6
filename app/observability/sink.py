"""The log's one writer: every line of the process goes through a :class:`LineSink`, which owns the log's file
descriptor (stderr).

Why: the access line, one per request, written with one ``write(2)`` on the request path costs a system call on the
event loop, and a stalled reader of the pipe (the container runtime) stalls the server. Here it is only appended to
a bounded buffer under a lock (:meth:`LineSink.put`); a writer thread writes the buffer in batches, every
``interval`` (50 ms by default) or as soon as it holds ``high_water`` bytes. Every other line (uvicorn's, a library's,
a warning, an error, a tool worker's relayed output) is rare and is written at once, after what the buffer holds
(:meth:`LineSink.write_now`): it is on stderr when the call that logged it returns, and it is never lost in a crash.
All lines share the one buffer and the one writer lock, so they never interleave and stay in the order they were
put, whoever wrote them.

What is lost, and when:

- a full buffer (``capacity``, 1 MiB by default: a writer that cannot keep up for a while) drops the line, never
  blocks the caller; the drops are counted (:attr:`LineSink.dropped`, the metric ``erlmcp_log_lines_dropped_total``)
  and, once there is room again, one WARNING line says how many (at most one every 10 s while the log cannot
  keep up);
- a reader that went away (``EPIPE``) costs the lines of the batch, counted the same way;
- ``close()`` (at shutdown, after the server's graceful stop, and ``atexit``) writes what is left; lines put after
  it are written at once by their caller. On a hard crash at most the buffer is lost.

A forked child (a tool or plugin that forks) writes its own lines at once and never the parent's buffered ones.

A non-blocking descriptor (shared with an asyncio pipe, as stdio's can be) is waited on when it is full (EAGAIN),
and a partial write goes on from where it stopped.
"""

from __future__ import annotations

import os
import select
import threading
import time
import weakref

import structlog

__all__ = ["LineSink", "dropped_lines", "install", "process_sink"]

CAPACITY = 1 << 20
HIGH_WATER = 64 << 10
INTERVAL = 0.05
_ATOMIC = select.PIPE_BUF  # the most a pipe takes in one write without interleaving another writer's bytes
_WAIT_WRITABLE = 1.0  # how long one wait for a full non-blocking descriptor lasts before writing is tried again
REPORT_SECONDS = 10.0  # at most one WARNING about dropped lines this often (and one at close, for the rest)

log = structlog.get_logger(__name__)


class LineSink:
    """Lines (bytes, each ending with a newline) to a file descriptor, through a bounded buffer and one writer
    thread (see the module's description); safe to use from any thread."""

    def __init__(
        self, fd: int = 2, *, capacity: int = CAPACITY, high_water: int = HIGH_WATER, interval: float = INTERVAL
    ) -> None:
        if capacity <= 0 or high_water <= 0 or interval <= 0:
            raise ValueError(
                f"capacity, high_water and interval must be positive: {capacity}, {high_water}, {interval}"
            )
        self._fd = fd
        self._capacity = capacity
        self._high_water = high_water
        self._interval = interval
        self._lock = threading.Lock()  # the buffer and the counts; held only to append or swap, never to write
        self._write_lock = threading.Lock()  # one batch at a time, in the order they were taken
        self._buffer = bytearray()
        self._dropped = 0
        self._unreported = 0  # lines dropped on a full buffer since the last WARNING about it
        self._reported_at = -REPORT_SECONDS
        self._closed = False
        self._wake = threading.Event()
        self._writer = threading.Thread(target=self._run, name="log-sink", daemon=True)
        self._writer.start()
        _LIVE.add(self)

    def _after_fork_in_child(self) -> None:
        """In a forked child (a tool or plugin that forks): no writer thread came along, and a lock may have been
        held by a thread of the parent at the fork. Fresh locks, none of the parent's buffered lines (the parent
        writes them), and every line of the child written at once, as after :meth:`close`."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buffer = bytearray()
        self._unreported = 0
        self._closed = True
        self._wake = threading.Event()

    @property
    def dropped(self) -> int:
        """Lines lost so far: dropped on a full buffer, or not written because the reader went away."""
        return self._dropped

    def put(self, line: bytes) -> None:
        """Append one line (with its newline) to the buffer; drop and count it when the buffer is full. Never
        waits for the descriptor, except once the sink is closed, when the line is written at once."""
        with self._lock:
            buffer = self._buffer  # the one the writer takes next (it swaps it only under the lock)
            if len(buffer) + len(line) > self._capacity:
                self._dropped += 1
                self._unreported += 1
                return
            buffer += line
            closed = self._closed
            wake = len(buffer) >= self._high_water
        if closed:
            self.flush()
        elif wake and not self._wake.is_set():
            self._wake.set()

    def write_now(self, line: bytes) -> None:
        """Write what the buffer holds and then ``line``, in the caller's thread, before returning: for every line
        but the access line (a warning, an error before a crash, a line an operator waits for), which are few. It
        waits for the descriptor as a plain write would (a stalled reader stalls the caller, as it always did)."""
        with self._write_lock:
            batch = self._take()
            batch += line
            self._write_taken(batch)

    def flush(self) -> None:
        """Write everything put so far, in the caller's thread (after any batch being written)."""
        self._write_batch()
        self._report(now=True)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer thread and write what is left; later lines are written by their callers. Waits at most
        about ``timeout`` seconds for a descriptor that takes nothing (its reader stalled); idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        self._writer.join(timeout)
        if self._write_lock.acquire(timeout=timeout):  # the writer may still be stuck on a stalled descriptor
            try:
                self._write_taken(self._take())
            finally:
                self._write_lock.release()
            self._report(now=True)  # written straight out, the sink being closed

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            self._write_batch()
            self._report()
            if self._closed:
                return

    def _take(self) -> bytearray:
        with self._lock:
            batch, self._buffer = self._buffer, bytearray()
        return batch

    def _write_batch(self) -> None:
        with self._write_lock:
            self._write_taken(self._take())

    def _write_taken(self, batch: bytearray) -> None:
        """Write ``batch`` whole (called with the write lock held), in writes of whole lines of at most
        ``PIPE_BUF`` bytes where it can (a pipe takes those whole, so nothing else writing to stderr at the same time
        can land inside a line; a longer line goes alone): on after a partial write, waiting while a non-blocking
        descriptor is full; a reader that went away (or a descriptor gone) costs the batch's remaining lines."""
        start, end = 0, len(batch)
        while start < end:
            stop = end
            if end - start > _ATOMIC:  # up to the last newline within PIPE_BUF, or the end of a longer line
                stop = batch.rfind(b"\n", start, start + _ATOMIC) + 1 or batch.find(b"\n", start) + 1 or end
            view = memoryview(batch)[start:stop]
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except BlockingIOError:
                    select.select([], [self._fd], [], _WAIT_WRITABLE)
                except OSError:  # EPIPE (the reader went away), EBADF, ENOSPC, EIO: nothing more can be written
                    lost = batch.count(b"\n", stop - len(view))
                    with self._lock:
                        self._dropped += lost
                    return
            start = stop

    def _report(self, *, now: bool = False) -> None:
        """Once there is room again: one WARNING line saying how many lines a full buffer dropped (at most every
        :data:`REPORT_SECONDS` while the log cannot keep up, unless ``now``)."""
        if not self._unreported:
            return
        with self._lock:
            if not now and time.monotonic() - self._reported_at < REPORT_SECONDS:
                return
            dropped, self._unreported = self._unreported, 0
            self._reported_at = time.monotonic()
        if dropped:
            log.warning("log lines dropped", dropped=dropped, reason="the log's buffer was full")


_LIVE: weakref.WeakSet[LineSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for line_sink in list(_LIVE):
        line_sink._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

_PROCESS: LineSink | None = None


def install(sink: LineSink | None) -> LineSink | None:
    """Make ``sink`` the process's (what :func:`dropped_lines` reports); returns the one it replaces."""
    global _PROCESS
    before, _PROCESS = _PROCESS, sink
    return before


def process_sink() -> LineSink | None:
    """The process's sink, once logging is configured."""
    return _PROCESS


def dropped_lines() -> int:
    """Lines the process's sink lost so far (0 before logging is configured)."""
    return _PROCESS.dropped if _PROCESS is not None else 0
