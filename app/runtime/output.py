"""What a tool worker writes reaches the server's log as the server's own records, never raw.

A worker's stdout and stderr (one pipe: the tool's prints, a library's warning or log line, a traceback) are read by
the server, and each line becomes one record of the logger ``erlmcp.worker`` at WARNING, with the worker's
``pid``, the ``function`` (and ``tool``, when the caller named it) of the call it runs or last ran, and
``cut_bytes`` when the line was cut. The record goes through the server's log handler like any other: it is JSON
when the log is, and the redactor removes credentials from it. Nothing a tool writes can pose as a record of its
own (its line is the message of the server's record, quoted) or corrupt the worker's protocol (which has pipes of
its own, see :mod:`app.runtime.worker`). WARNING: a server's tools have nothing to say on these streams but
problems, and a crash's traceback must show at the usual levels.

A chatty or hostile tool can neither flood the log, nor grow the server's memory, nor keep its event loop busy:

- a line is cut at :data:`MAX_LINE_BYTES` (4096): a traceback's or a warning's line is a few hundred bytes, and a
  record stays far below Cloud Logging's 256 KiB per entry; the server holds at most one cut line per worker. The
  cut also drops the word it falls in (back to the last space or quote), which may be the start of a credential
  the redactor could no longer recognise whole;
- the pool logs :data:`LINES_BURST` (200) lines at once and :data:`LINES_PER_SECOND` (20) a second, all its
  workers together (a fresh worker gets no fresh allowance): a traceback, even a long chained one, fits whole;
  a tool writing without end adds at most 80 KiB a second to the log. Lines past it are dropped and counted, and a
  record says how many, at most every :data:`DROPPED_REPORT_SECONDS` (10) per worker (the first within that
  time of the first dropped line) and when the worker's output ends;
- a worker's pipe is read at most :data:`READ_BYTES_PER_SECOND` (16 MiB) a second, a few percent of a core at most
  (what is dropped is counted, not split into lines); a tool writing faster waits on its full pipe, which costs it
  alone. Once the worker has exited, what is left is read at once.

A line is logged as the output of the call that wrote it: when a call's answer arrives, the pool waits until what
the worker wrote before it has been read (:meth:`OutputRelay.caught_up`: one system call when nothing is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog

__all__ = [
    "DROPPED_REPORT_SECONDS",
    "LINES_BURST",
    "LINES_PER_SECOND",
    "MAX_LINE_BYTES",
    "READ_BYTES_PER_SECOND",
    "LineBudget",
    "OutputRelay",
    "Writer",
]

MAX_LINE_BYTES = 4096
LINES_PER_SECOND = 20.0
LINES_BURST = 200
DROPPED_REPORT_SECONDS = 10.0
READ_BYTES_PER_SECOND = 16 * 1024 * 1024

_CATCH_UP_SECONDS = 0.5  # how long a call's answer may wait for the call's output to be logged (about a ms)
_PACE_SLACK_SECONDS = 0.1  # reading may run this far ahead of the pace (a burst of 1.6 MiB)
_WORD_ENDS = tuple(bytes([byte]) for byte in b" \t\r\x0b\x0c\"'")  # a cut line is kept up to the last of these

log = structlog.get_logger("erlmcp.worker")


class LineBudget:
    """A token bucket of log lines: ``burst`` at once, refilled at ``per_second``; shared by a pool's workers."""

    def __init__(self, per_second: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_second < 0 or burst < 0:
            raise ValueError("per_second and burst must be 0 or more")
        self._rate = per_second
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._counted = clock()

    def take(self, lines: int) -> int:
        """Spend up to ``lines`` tokens; how many were granted."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._counted) * self._rate)
        self._counted = now
        granted = min(lines, int(self._tokens))
        self._tokens -= granted
        return granted


@dataclass(slots=True)
class Writer:
    """Who writes a worker's output: its pid, and the function (and tool) of the call it runs or last ran."""

    pid: int
    function: str | None = None
    tool: str | None = None

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"pid": self.pid}
        if self.function is not None:
            fields["function"] = self.function
        if self.tool is not None:
            fields["tool"] = self.tool
        return fields


class OutputRelay(asyncio.Protocol):
    """Reads one worker's output pipe (``read_fd``, which it takes over and closes) and logs it line by line
    within the pool's ``budget`` (see the module's description); :meth:`run` ends at the end of the pipe. It is
    the pipe's protocol: what arrives is logged at once (no buffer in between)."""

    def __init__(
        self,
        read_fd: int,
        writer: Writer,
        budget: LineBudget,
        *,
        max_line_bytes: int = MAX_LINE_BYTES,
        read_bytes_per_second: float = READ_BYTES_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._file = os.fdopen(read_fd, "rb", buffering=0)
        self.writer = writer
        self._budget = budget
        self._max_line = max_line_bytes
        self._read_rate = read_bytes_per_second
        self._clock = clock
        self._line = bytearray()
        self._cut = 0  # bytes of the current line past the cap
        self._dropped = 0  # lines dropped and not yet reported
        self._reported = clock()  # when dropped lines were last reported
        self._report: asyncio.TimerHandle | None = None  # the next report, while lines wait to be reported
        self._due = 0.0  # when reading is back on pace
        self._finishing = False
        self._transport: asyncio.ReadTransport | None = None  # while the pipe is open
        self._paused: asyncio.TimerHandle | None = None  # reading resumes then
        self._ended: asyncio.Future[None] | None = None
        self._progress = asyncio.Event()  # set whenever output was read

    def finish(self) -> None:
        """The worker has exited: read what is left of its output without pacing."""
        self._finishing = True
        self._resume()

    async def caught_up(self, timeout: float = _CATCH_UP_SECONDS) -> None:
        """Wait (``timeout`` at most) until what the worker wrote so far is logged, so that it is logged as the
        output of the call that wrote it; called when the call's answer arrives, which the worker sent after it.
        Costs one system call when there is nothing left to read; waits for nothing while reading is paced."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    self._progress.clear()
                    if self._transport is None or self._paused is not None or not self._unread():
                        return
                    await self._progress.wait()

    async def run(self) -> None:
        """Relay until the pipe ends (every process holding it has exited) or the task is cancelled."""
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        try:
            transport, _ = await loop.connect_read_pipe(lambda: self, self._file)
        except BaseException:
            self._file.close()
            raise
        try:
            await self._ended
            if (self._line or self._cut) and self._budget.take(1):  # a last line without its newline
                self._emit()
        finally:
            self._transport = None
            if self._paused is not None:
                self._paused.cancel()
            transport.close()
            self._report_dropped()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.ReadTransport, transport)  # a read pipe's (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        self._feed(data)
        self._progress.set()
        if self._finishing or self._transport is None:
            return
        now = self._clock()
        self._due = max(self._due, now - _PACE_SLACK_SECONDS) + len(data) / self._read_rate
        if self._due > now and self._paused is None:  # ahead of the pace: the pipe fills, and the worker waits
            self._transport.pause_reading()
            self._paused = asyncio.get_running_loop().call_later(self._due - now, self._resume)

    def _resume(self) -> None:
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
            if self._transport is not None:
                self._transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._progress.set()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def _unread(self) -> int:
        """Bytes in the pipe not read yet."""
        try:
            (count,) = struct.unpack("i", fcntl.ioctl(self._file.fileno(), termios.FIONREAD, bytes(4)))
        except (OSError, ValueError):  # closed
            return 0
        return int(count)

    def _feed(self, chunk: bytes) -> None:
        """Log the lines ``chunk`` ends, as many as the budget grants; keep the start of the line it leaves open."""
        count = chunk.count(b"\n")
        if count == 0:
            self._extend(chunk)
            return
        granted = self._budget.take(count)
        start = 0
        for _ in range(granted):
            end = chunk.index(b"\n", start)
            self._extend(chunk[start:end])
            self._emit()
            start = end + 1
        if granted < count:  # the rest is counted, not read line by line (a flood costs a count per chunk)
            self._drop(count - granted)
            self._line.clear()
            self._cut = 0
            start = chunk.rindex(b"\n") + 1
        self._extend(chunk[start:])

    def _drop(self, lines: int) -> None:
        """Count dropped lines; they are reported :data:`DROPPED_REPORT_SECONDS` after the last report at most."""
        self._dropped += lines
        if self._report is None:
            delay = max(0.0, self._reported + DROPPED_REPORT_SECONDS - self._clock())
            self._report = asyncio.get_running_loop().call_later(delay, self._report_dropped)

    def _extend(self, data: bytes) -> None:
        room = self._max_line - len(self._line)
        if len(data) <= room:
            self._line += data
        else:
            self._line += data[: max(room, 0)]
            self._cut += len(data) - max(room, 0)

    def _emit(self) -> None:
        line, cut = bytes(self._line), self._cut
        self._line.clear()
        self._cut = 0
        if cut:
            kept = line[: max(line.rfind(end) for end in _WORD_ENDS) + 1]  # the word the cut fell in goes too
            cut += len(line) - len(kept)
            line = kept
        text = line.decode("utf-8", "replace").rstrip()
        if not text and not cut:
            return  # a blank line
        fields = self.writer.fields()
        if cut:
            fields["cut_bytes"] = cut
        log.warning(text, **fields)

    def _report_dropped(self) -> None:
        if self._report is not None:
            self._report.cancel()
            self._report = None
        self._reported = self._clock()
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            log.warning(
                "tool worker output dropped: more lines than the log takes from tool workers",
                dropped_lines=dropped,
                **self.writer.fields(),
            )
