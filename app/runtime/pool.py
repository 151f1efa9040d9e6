"""A pool of worker processes that run Python tool functions (``module:function``) isolated from the server.

Catalogue tools marked ``isolation: process`` run here. Each worker is a fresh ``python -m app.runtime.worker``
(never a fork of the server: it inherits no sockets, threads or locks) whose address space is capped with
``RLIMIT_AS``, so a runaway allocation ends its own call with :class:`WorkerOutOfMemory` and the server's memory
never sees it. A worker that dies (``os._exit``, a segfault, a kill) fails only the call it was running, and a
fresh one takes its place on the next call. A caller that gives up (a deadline, a client's
``notifications/cancelled``: both arrive as :class:`asyncio.CancelledError`) has its worker killed at once, so a
function stuck in a loop or a sleep stops costing CPU and memory. Each kill costs a fresh worker on the next call,
so a principal's cancellations may kill only so many workers a minute (:class:`~app.runtime.budget.RestartBudget`);
past that, a cancelled call is abandoned: it keeps its worker (and its place in the pool) until it ends, and its
result is thrown away, or until its time limit, when the worker is killed after all.

Each worker leads its own session, so the terminal's Ctrl-C goes to the server alone (which then closes the
pool), and a kill reaches the processes a tool started as well.

What a worker writes to its stdout or stderr (a tool's prints, a library's warning, a traceback) goes to a pipe of
the pool's, never to the server's stderr: :class:`~app.runtime.output.OutputRelay` logs it line by line as records
of ``erlmcp.worker``, through the server's log handler and its redactor, cut and rate-bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from app.runtime.budget import RestartBudget
from app.runtime.output import LINES_BURST, LINES_PER_SECOND, MAX_LINE_BYTES, LineBudget, OutputRelay, Writer

__all__ = [
    "MIN_MEMORY_LIMIT_MB",
    "ToolFailed",
    "WorkerCrashed",
    "WorkerError",
    "WorkerOutOfMemory",
    "WorkerPool",
]

log = structlog.get_logger(__name__)

# RLIMIT_AS counts address space, not resident memory. An idle worker takes about 25 MB of it (the interpreter,
# orjson, pydantic_core); importing pydantic and app.features.tools brings it to about 77 MB; each thread a tool
# starts adds 8 MB (its stack; malloc arenas are capped at two in the worker). 64 MB runs only the lightest
# tools, 256 MB suits most. Libraries that reserve memory up front need more: numpy's OpenBLAS exits (code 1)
# at 128 MB on a 2-core machine, buffers per core, and fits with OPENBLAS_NUM_THREADS=1.
MIN_MEMORY_LIMIT_MB = 64

_HEADER = struct.Struct(">I")
_EXIT_GRACE_SECONDS = 1.0  # how long a worker that broke its pipe or ran out of memory gets to exit by itself
_REAP_SECONDS = 10.0  # from SIGKILL to the end of its pipes (milliseconds, unless a stray process holds one)
_OUTPUT_SECONDS = 1.0  # how long an ended worker's last output gets to reach the log before the pool logs its end


class WorkerError(Exception):
    """A call that did not return a value; ``str()`` is a sentence for the model to read."""


class WorkerCrashed(WorkerError):
    """The worker died during the call (``returncode`` is None when it stopped answering and had to be killed)."""

    def __init__(self, returncode: int | None) -> None:
        self.returncode = returncode
        if returncode is None:
            super().__init__("the tool's worker process stopped answering and was killed")
        else:
            super().__init__(f"the tool's worker process died ({_describe_exit(returncode)})")


class WorkerOutOfMemory(WorkerError):
    """The function needed more memory than the worker's limit; the worker exited."""

    def __init__(self, limit_mb: int | None) -> None:
        self.limit_mb = limit_mb
        limit = f" (limit {limit_mb} MB)" if limit_mb is not None else ""
        super().__init__(f"the tool ran out of memory{limit}")


class ToolFailed(WorkerError):
    """The function raised, could not be imported, or returned what is not JSON; the worker lives on.

    ``kind`` is ``tool_error`` (a :class:`~app.features.tools.ToolError`: the message is the tool's own),
    ``exception``, ``import``, ``not_json`` or ``too_large``; ``type`` names the exception class.
    """

    def __init__(self, kind: str, type: str, message: str) -> None:
        self.kind, self.type, self.message = kind, type, message
        if kind == "exception":
            super().__init__(f"the tool raised {type}: {message}" if message else f"the tool raised {type}")
        else:
            super().__init__(message)


def _describe_exit(returncode: int) -> str:
    """``exit code 3`` or ``killed by signal SIGSEGV``, for an asyncio return code."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"killed by signal {name}"


class _BadAnswer(Exception):
    """The worker wrote something that is not a frame of this protocol, or one over the size limit."""

    def __init__(self, error: WorkerError) -> None:
        super().__init__(str(error))
        self.error = error


class _Worker:
    """One worker process, its two protocol pipes, and the relay of its output to the log."""

    def __init__(self, process: asyncio.subprocess.Process, output: OutputRelay) -> None:
        self.process = process
        self.pid = process.pid
        self.output = output
        self.relaying = asyncio.get_running_loop().create_task(output.run())
        self._reading = False  # a call is waiting in receive()
        self._read_done = asyncio.Event()
        self._ending: asyncio.Future[int | None] | None = None

    def kill(self) -> None:
        """SIGKILL the worker's process group: the worker and whatever the tool started (unless it left the group)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:  # the group is empty already
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def send(self, body: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(_HEADER.pack(len(body)) + body)
        await stdin.drain()

    async def receive(self, max_bytes: int) -> dict[str, Any]:
        """The next frame. Raises :class:`asyncio.IncompleteReadError` when the pipe ends (the worker died)."""
        stdout = self.process.stdout
        assert stdout is not None
        self._reading = True
        self._read_done.clear()
        try:
            (length,) = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
            if length > max_bytes:
                message = f"the tool's result is too large ({length} bytes; the limit is {max_bytes})"
                raise _BadAnswer(ToolFailed("too_large", "", message))
            body = await stdout.readexactly(length)
        finally:
            self._reading = False
            self._read_done.set()
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _BadAnswer(WorkerError(f"the tool's worker process sent an unreadable answer: {exc}")) from None
        if not isinstance(message, dict):
            raise _BadAnswer(WorkerError("the tool's worker process sent an unreadable answer"))
        return message

    async def end(self, grace: float) -> int | None:
        """Kill the worker (after ``grace`` seconds to exit by itself) and reap it; the status it exited with by
        itself, or None when it had to be killed. Done once, whoever asks (a call, ``aclose``), and carried
        through even if the one who asked first is cancelled."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end(grace))
        return await asyncio.shield(self._ending)

    async def _end(self, grace: float) -> int | None:
        process = self.process
        if grace > 0 and process.returncode is None:
            try:
                async with asyncio.timeout(grace):
                    await process.wait()
            except TimeoutError:
                pass
        returncode = process.returncode  # set when it was reaped, even while a pipe is still held open
        self.kill()  # also when it has exited: a process the tool started may still hold the group
        try:
            async with asyncio.timeout(_REAP_SECONDS):
                # wait() also waits for the end of stdout, which a reader paused on a full buffer never sees:
                # read what is left (a pipe's worth at most, the writer is dead) once no call is reading it.
                while self._reading:
                    await self._read_done.wait()
                stdout = process.stdout
                with contextlib.suppress(OSError):  # a pipe that broke rather than ended: nothing left to read
                    while stdout is not None and await stdout.read(1 << 16):
                        pass
                await process.wait()
        except TimeoutError:  # something outside its process group holds its pipe
            log.error("tool worker killed but its pipes stay open", pid=self.pid, returncode=process.returncode)
        # Its last words (a traceback) reach the log before the pool says it ended, unless a process the tool
        # started (and that left its group) holds the output pipe: its lines are then logged as they come.
        self.output.finish()
        await asyncio.wait([self.relaying], timeout=_OUTPUT_SECONDS)
        return returncode


@dataclass(slots=True)
class _Call:
    """One call on its way through a worker."""

    worker: _Worker
    function: str
    tool: str | None = None
    started: bool = False  # the exchange began (from then on it releases or ends the worker itself)


class WorkerPool:
    """Up to ``size`` worker processes, each capped at ``memory_limit_mb`` of address space (None: no cap),
    started on first use; calls beyond ``size`` wait their turn, first come first served.

    Raises :class:`ValueError` for a ``size`` below 1 or a limit below :data:`MIN_MEMORY_LIMIT_MB`. A result
    over ``max_result_bytes`` (encoded) fails its call, so a tool cannot make the server hold a huge answer.
    Built without an event loop; used from one loop only (its processes' pipes belong to that loop).

    A cancelled call kills its worker while its principal has ``cancel_restarts_per_minute`` left (per principal,
    refilled evenly); past that it is abandoned, and killed ``call_timeout_seconds`` after it was made (or after
    the shorter timeout the call gave) unless it ended first.

    What the workers write is logged a line a record, each cut at ``output_line_bytes``, at most
    ``output_lines_burst`` at once and ``output_lines_per_second`` for all the workers together (the rest is
    counted as dropped): see :mod:`app.runtime.output` for the defaults and why.
    """

    def __init__(
        self,
        *,
        size: int,
        memory_limit_mb: int | None,
        start_timeout_seconds: float = 30.0,
        max_result_bytes: int = 16 * 1024 * 1024,
        cancel_restarts_per_minute: int = 10,
        call_timeout_seconds: float = 30.0,
        output_line_bytes: int = MAX_LINE_BYTES,
        output_lines_per_second: float = LINES_PER_SECOND,
        output_lines_burst: int = LINES_BURST,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        if memory_limit_mb is not None and memory_limit_mb < MIN_MEMORY_LIMIT_MB:
            raise ValueError(
                f"memory_limit_mb must be at least {MIN_MEMORY_LIMIT_MB} (or None for no limit), not "
                f"{memory_limit_mb}: the limit counts address space, and an idle worker alone takes about 25 MB"
            )
        if start_timeout_seconds <= 0:
            raise ValueError("start_timeout_seconds must be positive")
        if call_timeout_seconds <= 0:
            raise ValueError("call_timeout_seconds must be positive")
        if output_line_bytes < 1:
            raise ValueError("output_line_bytes must be positive")
        if output_lines_per_second < 0 or output_lines_burst < 0:
            raise ValueError("output_lines_per_second and output_lines_burst must be 0 or more")
        self._size = size
        self._memory_limit_mb = memory_limit_mb
        self._start_timeout = start_timeout_seconds
        self._max_result_bytes = max_result_bytes
        self._slots = asyncio.Semaphore(size)  # binds to the loop on first use, not here
        self._workers: dict[_Worker, None] = {}  # alive (started and not yet reaped), oldest first
        self._idle: list[_Worker] = []
        self._closed = False
        self._restarts = RestartBudget(cancel_restarts_per_minute)
        self._call_timeout = call_timeout_seconds
        self._abandoned: set[asyncio.Task[Any]] = set()  # cancelled calls left to end in their workers
        self._output_line_bytes = output_line_bytes
        self._output_budget = LineBudget(output_lines_per_second, output_lines_burst)
        self._relays: set[asyncio.Task[None]] = set()  # workers' output still being read
        self._spawned = 0

    @property
    def live_workers(self) -> int:
        """Worker processes running now, idle or busy."""
        return len(self._workers)

    @property
    def pids(self) -> tuple[int, ...]:
        """The process ids of the live workers, oldest first."""
        return tuple(worker.pid for worker in self._workers)

    @property
    def workers_started(self) -> int:
        """Worker processes started so far: the first ones, and every replacement of one that died or was killed."""
        return self._spawned

    @property
    def abandoned_calls(self) -> int:
        """Cancelled calls still running in their workers (their results will be thrown away)."""
        return len(self._abandoned)

    async def call(
        self,
        function: str,
        arguments: Mapping[str, Any],
        *,
        principal: str | None = None,
        timeout_seconds: float | None = None,
        tool: str | None = None,
    ) -> Any:
        """Run ``function`` (``module:function``) with ``arguments`` as keyword arguments in a worker, and return
        the JSON value it returned (pydantic models, dataclasses, datetimes... arrive converted).

        ``principal`` is who asked: a cancelled call kills its worker only while the principal's allowance of
        restarts lasts. ``timeout_seconds`` (at most the pool's ``call_timeout_seconds``) is when an abandoned call
        is killed, counted from now. ``tool`` is the catalogue's name for it: the worker's output names it in the log.

        Raises:
            WorkerCrashed, WorkerOutOfMemory, ToolFailed: the call failed; the next call gets a working worker.
            WorkerError: the pool is closed, or no worker could be started.
            TypeError: ``arguments`` are not JSON.
        """
        self._check_open()
        request = orjson.dumps({"function": function, "arguments": dict(arguments)})
        loop = asyncio.get_running_loop()
        limit = self._call_timeout if timeout_seconds is None else min(timeout_seconds, self._call_timeout)
        deadline = loop.time() + limit
        await self._slots.acquire()
        taking: asyncio.Task[_Worker] | None = None
        try:
            self._check_open()
            # Shielded: a caller cancelled while its worker starts leaves the worker to finish starting and go idle
            # (holding the slot until then), so that cancelling during starts cannot restart workers in a loop.
            taking = loop.create_task(self._take())
            worker = await asyncio.shield(taking)
        except asyncio.CancelledError:
            if taking is not None:  # (run at once if the worker was already taken)
                taking.add_done_callback(self._keep_idle)
            else:
                self._slots.release()
            raise
        except BaseException:
            self._slots.release()
            raise
        # The exchange owns the slot and the worker from here, and gives them back however it ends, even when the
        # caller has gone (an abandoned call).
        call = _Call(worker, function, tool)
        exchange = loop.create_task(self._exchange(call, request))
        exchange.add_done_callback(lambda _: self._finished(call))
        try:
            return await asyncio.shield(exchange)
        except asyncio.CancelledError:
            if exchange.done():
                raise
            if self._restarts.take(principal):  # stop the function where it is
                exchange.cancel()
                await asyncio.wait([exchange])
                log.info("tool call cancelled; its worker was killed", pid=worker.pid, function=function)
            else:
                self._abandon(call, exchange, deadline)
                log.warning(
                    "tool call cancelled past its caller's allowance of worker restarts; it runs on until it ends "
                    "or reaches its time limit, and its result is discarded",
                    pid=worker.pid,
                    function=function,
                    principal=principal,
                    seconds_left=round(max(0.0, deadline - loop.time()), 3),
                )
            raise

    def _abandon(self, call: _Call, exchange: asyncio.Task[Any], deadline: float) -> None:
        """Let a cancelled call's exchange run on; cancel it (which kills its worker) at ``deadline``."""

        def time_is_up() -> None:
            log.info("abandoned tool call reached its time limit; its worker was killed",
                     pid=call.worker.pid, function=call.function)  # fmt: skip
            exchange.cancel()

        stop = asyncio.get_running_loop().call_at(deadline, time_is_up)
        self._abandoned.add(exchange)

        def ended(task: asyncio.Task[Any]) -> None:
            stop.cancel()
            self._abandoned.discard(task)
            if not task.cancelled() and task.exception() is not None:  # retrieved: nobody waits for it
                log.debug("abandoned tool call failed", function=call.function, error=str(task.exception()))

        exchange.add_done_callback(ended)

    def _keep_idle(self, taking: asyncio.Task[_Worker]) -> None:
        """A worker taken (or started) for a caller that has gone: back to the idle list, and its slot freed."""
        self._slots.release()
        if not taking.cancelled() and taking.exception() is None:
            self._release(taking.result())

    def _finished(self, call: _Call) -> None:
        """An exchange ended: its slot is free; a worker it never got to use goes back to the idle list."""
        self._slots.release()
        if not call.started:
            self._release(call.worker)

    async def _exchange(self, call: _Call, request: bytes) -> Any:
        """Send one call to its worker and read the answer; the worker goes back to the idle list or is ended,
        however this ends (cancelling it kills the worker)."""
        call.started = True
        worker, function = call.worker, call.function
        worker.output.writer.function, worker.output.writer.tool = function, call.tool  # what its output is from
        try:
            await worker.send(request)
            answer = await worker.receive(self._max_result_bytes)
            await worker.output.caught_up()  # what the call wrote is logged as its output, before the next call
        except (asyncio.IncompleteReadError, ConnectionError):
            returncode = await self._end(worker, grace=_EXIT_GRACE_SECONDS)
            self._check_open()  # the pool killed it while closing
            crash = WorkerCrashed(returncode)
            log.warning(
                "tool worker died; a fresh one replaces it", pid=worker.pid, function=function, error=str(crash)
            )
            raise crash from None
        except _BadAnswer as exc:
            await self._end(worker, grace=0)
            log.warning("tool worker killed after a bad answer", pid=worker.pid, function=function, error=str(exc))
            raise exc.error from None
        except BaseException:  # cancelled (the caller, or an abandoned call's time limit): kill it where it is
            await self._end(worker, grace=0)
            raise
        if "ok" in answer:
            self._release(worker)
            return answer["ok"]
        error = answer.get("error")
        if not isinstance(error, dict):
            await self._end(worker, grace=0)
            raise WorkerError("the tool's worker process sent an unreadable answer")
        kind, type_name, message = (str(error.get(key, "")) for key in ("kind", "type", "message"))
        if kind == "out_of_memory":
            await self._end(worker, grace=_EXIT_GRACE_SECONDS)  # it exits by itself
            log.warning(
                "tool worker ran out of memory; a fresh one replaces it",
                pid=worker.pid,
                function=function,
                limit_mb=self._memory_limit_mb,
            )
            raise WorkerOutOfMemory(self._memory_limit_mb)
        self._release(worker)
        raise ToolFailed(kind, type_name, message)

    async def aclose(self, *, grace_seconds: float = 2.0) -> None:
        """Stop every worker: close its stdin (an idle worker exits at once, a busy one after its call), and kill
        what is still running after ``grace_seconds``. Calls still running then fail; later calls raise
        :class:`WorkerError`. Calling it again does nothing more."""
        self._closed = True
        self._idle.clear()
        for exchange in list(self._abandoned):
            exchange.cancel()  # kills its worker
        workers = list(self._workers)
        if workers:
            await asyncio.gather(*(self._stop(worker, grace_seconds) for worker in workers))
            log.info("tool workers stopped", count=len(workers))
        relays = list(self._relays)  # output pipes a process a tool started (outside its group) still holds
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    def _check_open(self) -> None:
        if self._closed:
            raise WorkerError("the worker pool is closed")

    async def _take(self) -> _Worker:
        """An idle worker, or a new one (the caller holds a slot, so at most ``size`` are alive)."""
        while self._idle:
            worker = self._idle.pop()  # the most recently used: its caches are warm
            if worker.process.returncode is None:
                return worker
            returncode = await self._end(worker, grace=0)  # it died while idle (an outside kill, the OOM killer)
            log.warning(
                "idle tool worker had died; a fresh one replaces it",
                pid=worker.pid,
                exit=_describe_exit(returncode) if returncode is not None else "unknown",
            )
        return await self._start()

    async def _start(self) -> _Worker:
        command = [sys.executable, "-m", "app.runtime.worker"]
        if self._memory_limit_mb is not None:
            command += ["--memory-limit-mb", str(self._memory_limit_mb)]
        started = time.monotonic()
        read_fd, write_fd = os.pipe()  # its stdout and stderr: the pool logs what comes out (close-on-exec here)
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=write_fd,
                start_new_session=True,
            )
        except BaseException as exc:
            os.close(read_fd)
            if isinstance(exc, OSError):
                raise WorkerError(f"cannot start a worker process for the tool: {exc}") from exc
            raise
        finally:
            os.close(write_fd)
        output = OutputRelay(read_fd, Writer(process.pid), self._output_budget, max_line_bytes=self._output_line_bytes)
        worker = _Worker(process, output)
        self._relays.add(worker.relaying)
        worker.relaying.add_done_callback(self._relay_ended)
        self._workers[worker] = None
        self._spawned += 1
        try:
            async with asyncio.timeout(self._start_timeout):
                ready = await worker.receive(self._max_result_bytes)
            if ready.get("ready") != worker.pid:
                raise _BadAnswer(WorkerError("the tool's worker process sent an unreadable answer"))
        except TimeoutError:
            await self._end(worker, grace=0)
            raise WorkerError(f"the tool's worker process did not start within {self._start_timeout:g} s") from None
        except asyncio.IncompleteReadError:
            returncode = await self._end(worker, grace=_EXIT_GRACE_SECONDS)
            self._check_open()  # the pool killed it while closing
            how = _describe_exit(returncode) if returncode is not None else "it closed its pipe"
            raise WorkerError(f"the tool's worker process failed to start ({how}); the server log says why") from None
        except _BadAnswer as exc:
            await self._end(worker, grace=0)
            raise exc.error from None
        except BaseException:
            await self._end(worker, grace=0)
            raise
        if self._closed:
            await self._end(worker, grace=0)
            self._check_open()
        log.info("tool worker started", pid=worker.pid, seconds=round(time.monotonic() - started, 3))
        return worker

    def _relay_ended(self, relay: asyncio.Task[None]) -> None:
        self._relays.discard(relay)
        if not relay.cancelled() and relay.exception() is not None:
            log.error("a tool worker's output could not be read", error=repr(relay.exception()))

    def _release(self, worker: _Worker) -> None:
        """Back to the idle list after a call, unless the pool closed meanwhile (``aclose`` is stopping it)."""
        if not self._closed and worker in self._workers:
            self._idle.append(worker)

    async def _end(self, worker: _Worker, *, grace: float) -> int | None:
        """Forget the worker, and kill and reap it (see :meth:`_Worker.end`)."""
        self._workers.pop(worker, None)
        if worker in self._idle:
            self._idle.remove(worker)
        return await worker.end(grace)

    async def _stop(self, worker: _Worker, grace: float) -> None:
        stdin = worker.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            await self._end(worker, grace=grace)
        except BaseException:
            worker.kill()
            raise
