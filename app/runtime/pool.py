"""A pool of worker processes that run Python tool functions (``module:function``) isolated from the server.

Catalogue tools marked ``isolation: process`` run here. Each worker is a fresh ``python -m app.runtime.worker``
(never a fork of the server: it inherits no sockets, threads or locks) whose address space is capped with
``RLIMIT_AS``, so a runaway allocation ends its own call with :class:`WorkerOutOfMemory` and the server's memory
never sees it. A worker that dies (``os._exit``, a segfault, a kill) fails only the call it was running, and a
fresh one takes its place on the next call. A caller that gives up (a deadline, a client's
``notifications/cancelled``: both arrive as :class:`asyncio.CancelledError`) has its worker killed at once, so a
function stuck in a loop or a sleep stops costing CPU and memory.

Each worker leads its own session, so the terminal's Ctrl-C goes to the server alone (which then closes the
pool), and a kill reaches the processes a tool started as well.
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
from typing import Any

import orjson
import structlog

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
    """One worker process and its two pipes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid
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
        return returncode


class WorkerPool:
    """Up to ``size`` worker processes, each capped at ``memory_limit_mb`` of address space (None: no cap),
    started on first use; calls beyond ``size`` wait their turn, first come first served.

    Raises :class:`ValueError` for a ``size`` below 1 or a limit below :data:`MIN_MEMORY_LIMIT_MB`. A result
    over ``max_result_bytes`` (encoded) fails its call, so a tool cannot make the server hold a huge answer.
    Built without an event loop; used from one loop only (its processes' pipes belong to that loop).
    """

    def __init__(
        self,
        *,
        size: int,
        memory_limit_mb: int | None,
        start_timeout_seconds: float = 30.0,
        max_result_bytes: int = 16 * 1024 * 1024,
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
        self._size = size
        self._memory_limit_mb = memory_limit_mb
        self._start_timeout = start_timeout_seconds
        self._max_result_bytes = max_result_bytes
        self._slots = asyncio.Semaphore(size)  # binds to the loop on first use, not here
        self._workers: dict[_Worker, None] = {}  # alive (started and not yet reaped), oldest first
        self._idle: list[_Worker] = []
        self._closed = False

    @property
    def live_workers(self) -> int:
        """Worker processes running now, idle or busy."""
        return len(self._workers)

    @property
    def pids(self) -> tuple[int, ...]:
        """The process ids of the live workers, oldest first."""
        return tuple(worker.pid for worker in self._workers)

    async def call(self, function: str, arguments: Mapping[str, Any]) -> Any:
        """Run ``function`` (``module:function``) with ``arguments`` as keyword arguments in a worker, and return
        the JSON value it returned (pydantic models, dataclasses, datetimes... arrive converted).

        Raises:
            WorkerCrashed, WorkerOutOfMemory, ToolFailed: the call failed; the next call gets a working worker.
            WorkerError: the pool is closed, or no worker could be started.
            TypeError: ``arguments`` are not JSON.
        """
        self._check_open()
        request = orjson.dumps({"function": function, "arguments": dict(arguments)})
        async with self._slots:
            self._check_open()
            worker = await self._take()
            try:
                await worker.send(request)
                answer = await worker.receive(self._max_result_bytes)
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
            except BaseException:  # cancelled (a deadline, the client): stop the function where it is
                await self._end(worker, grace=0)
                log.info("tool call cancelled; its worker was killed", pid=worker.pid, function=function)
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
        workers = list(self._workers)
        if workers:
            await asyncio.gather(*(self._stop(worker, grace_seconds) for worker in workers))
            log.info("tool workers stopped", count=len(workers))

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
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True
            )
        except OSError as exc:
            raise WorkerError(f"cannot start a worker process for the tool: {exc}") from exc
        worker = _Worker(process)
        self._workers[worker] = None
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
