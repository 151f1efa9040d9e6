"""One worker process of the tool pool: runs the ``module:function`` calls that arrive on its stdin, one at a
time, and answers on its own pipe.

Started by :class:`app.runtime.pool.WorkerPool` as ``python -m app.runtime.worker [--memory-limit-mb N]``, in
the server's working directory and environment, so it imports the same modules. Frames in both directions are a
4-byte big-endian length and a JSON body. The first frame out is ``{"ready": <pid>}``; then each request
``{"function": "pkg.mod:name", "arguments": {...}}`` gets ``{"ok": <JSON value>}`` or ``{"error": {"kind",
"type", "message"}}`` with kind ``tool_error``, ``exception``, ``out_of_memory``, ``import`` or ``not_json``.

The protocol pipes are moved off fds 0 and 1 before any tool runs: fd 1 then points at stderr and fd 0 at
``/dev/null``, so a tool that prints or reads stdin cannot corrupt a frame. Stderr is a pipe the pool reads: each
line the worker or its tool writes there becomes a record of the server's log (see :mod:`app.runtime.output`). After a
:class:`MemoryError` the worker answers ``out_of_memory`` and exits: its heap is no longer to be trusted.

This module imports only what every call needs (no structlog, no ``app.features``), so a worker is ready in
about 60 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import inspect
import io
import os
import resource
import signal
import struct
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import import_module
from typing import IO, TYPE_CHECKING, Any

import orjson
from pydantic_core import to_json

if TYPE_CHECKING:
    import asyncio

__all__ = ["EXIT_OUT_OF_MEMORY", "main"]

EXIT_OUT_OF_MEMORY = 75  # exit status after a MemoryError (it has already answered out_of_memory)

_HEADER = struct.Struct(">I")


class _Unresolvable(Exception):
    """The target cannot be imported, or names nothing callable."""

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def _type_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Name`` otherwise."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _error(kind: str, type_name: str, message: str) -> dict[str, Any]:
    return {"error": {"kind": kind, "type": type_name, "message": message}}


def _is_tool_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an :class:`app.runtime.errors.ToolError` (``app.features.tools`` re-exports it). A tool
    that raised one has imported it, so it is looked up among the loaded modules, not imported into every worker."""
    errors = sys.modules.get("app.runtime.errors")
    tool_error = getattr(errors, "ToolError", None)
    return isinstance(tool_error, type) and isinstance(exc, tool_error)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Worker:
    """Resolves targets (once each) and runs calls; async functions run on one long-lived event loop."""

    def __init__(self) -> None:
        self._functions: dict[str, Callable[..., Any]] = {}
        self._runner: asyncio.Runner | None = None

    def resolve(self, target: str) -> Callable[..., Any]:
        """The callable ``module:qualified.name`` names, imported on first use and kept."""
        function = self._functions.get(target)
        if function is not None:
            return function
        module_name, _, qualname = target.partition(":")
        if not module_name or not qualname:
            raise _Unresolvable(f"the tool function {target!r} is not written as module:function", "ValueError")
        try:
            found: Any = import_module(module_name)
        except Exception as exc:  # an import runs arbitrary code: any failure is the target's
            if _ran_out_of_memory(exc):
                raise
            if isinstance(exc, ModuleNotFoundError):
                message = f"cannot import the tool function {target!r}: {exc}"
            else:  # what the module raised may name its configuration: the log has it (redacted), not the caller
                traceback.print_exc()
                message = (
                    f"cannot import the tool function {target!r}: its module raised {_type_name(exc)} "
                    "(the server log has the traceback)"
                )
            raise _Unresolvable(message, _type_name(exc)) from None
        for part in qualname.split("."):
            try:
                found = getattr(found, part)
            except AttributeError:
                message = f"cannot find the tool function {target!r}: {module_name!r} has no attribute {qualname!r}"
                raise _Unresolvable(message, "AttributeError") from None
        if not callable(found):
            raise _Unresolvable(f"the tool function {target!r} is not callable", "TypeError")
        self._functions[target] = found
        return found  # type: ignore[no-any-return]

    def call(self, target: str, arguments: Mapping[str, Any]) -> Any:
        """What the function returns for ``arguments``; an awaitable result is awaited on the worker's loop."""
        result = self.resolve(target)(**arguments)
        if inspect.isawaitable(result):
            if self._runner is None:
                import asyncio  # only workers that run async tools pay for it

                self._runner = asyncio.Runner()
            result = self._runner.run(_awaited(result))
        return result

    def answer(self, request: bytes) -> bytes | None:
        """The response body for one request body; None when memory ran out (the worker must then exit)."""
        try:
            message = orjson.loads(request)
            target, arguments = message["function"], message["arguments"]
            if not isinstance(target, str) or not isinstance(arguments, dict):
                raise TypeError("the request needs a string 'function' and an object 'arguments'")
        except MemoryError:
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return _encode(_error("exception", _type_name(exc), f"malformed request: {exc}"))
        try:
            value = self.call(target, arguments)
        except _Unresolvable as exc:
            return _encode(_error("import", exc.type_name, str(exc)))
        except (SystemExit, KeyboardInterrupt):
            raise  # the tool asked the process to end: the pool reports it as a crash
        except BaseException as exc:  # CancelledError from an async tool included
            if _ran_out_of_memory(exc):
                return None
            if _is_tool_error(exc):
                return _encode(_error("tool_error", _type_name(exc), str(exc)))
            traceback.print_exc()
            return _encode(_error("exception", _type_name(exc), str(exc)))
        finally:
            _flush_stdout()
        try:
            return _encode({"ok": value})
        except BaseException as exc:  # PydanticSerializationError; pyo3's PanicException is a BaseException
            if _ran_out_of_memory(exc):
                return None
            return _encode(_error("not_json", _type_name(exc), f"the tool returned a value that is not JSON: {exc}"))


def _encode(message: Any) -> bytes:
    """JSON for a frame, converting what pydantic can (models, dataclasses, datetimes...). pydantic_core rather
    than orjson: orjson reserves several times a long string's size up front, which a memory limit turns into a
    crash for a result that fits comfortably."""
    return to_json(message, inf_nan_mode="null")


def _ran_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a :class:`MemoryError` or an ``ENOMEM`` (an extension module that could not be mapped
    fails its import this way), or was raised while handling or because of one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError) or (isinstance(current, OSError) and current.errno == errno.ENOMEM):
            return True
        if isinstance(current, ImportError) and "failed to map segment" in str(current):  # glibc's dlopen
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _flush_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()


def _take_protocol_pipes() -> tuple[IO[bytes], int]:
    """The request pipe (a reader) and the response fd, moved off fds 0 and 1; fd 1 becomes stderr and fd 0
    ``/dev/null``. The duplicates are close-on-exec, so processes a tool starts do not hold them."""
    requests = os.dup(0)
    responses = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # tool output reaches the log as it is printed
    return os.fdopen(requests, "rb"), responses


def _limit_memory(megabytes: int) -> None:
    """Cap the address space (``RLIMIT_AS``, soft and hard, so a tool cannot lift it again)."""
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _tune_libc(*, cap_arenas: bool) -> None:
    """On Linux with glibc: ask for SIGKILL when the server dies, so a tool busy in a long call does not outlive
    it (an idle worker exits anyway: its stdin reaches end of file); with ``cap_arenas``, keep malloc to two
    arenas. Each thread would otherwise reserve a 64 MB arena of address space, and ``RLIMIT_AS`` counts it: under
    a 256 MB limit a tool could not start a fourth thread."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if cap_arenas:
            libc.mallopt(-8, 2)  # M_ARENA_MAX; before any thread starts, so it applies to all of them
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl or mallopt
        pass


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _send(fd: int, body: bytes) -> None:
    for chunk in (_HEADER.pack(len(body)), body):
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve requests until stdin ends; the exit status is 0 then."""
    parser = argparse.ArgumentParser(prog="python -m app.runtime.worker", description="A tool pool worker.")
    parser.add_argument("--memory-limit-mb", type=int, default=0, help="cap the address space (0: no cap)")
    options = parser.parse_args(argv)
    requests, responses = _take_protocol_pipes()
    limit_mb = options.memory_limit_mb
    if limit_mb > 0:
        _limit_memory(limit_mb)
    _tune_libc(cap_arenas=limit_mb > 0)
    limit_text = f" (limit {limit_mb} MB)" if limit_mb > 0 else ""
    # Built now: after a MemoryError there may be no memory left to build it.
    out_of_memory = _encode(_error("out_of_memory", "MemoryError", f"the tool ran out of memory{limit_text}"))
    worker = Worker()
    try:
        _send(responses, _encode({"ready": os.getpid()}))
        while True:
            header = _read_exactly(requests, _HEADER.size)
            if header is None:
                return 0
            (length,) = _HEADER.unpack(header)
            request = _read_exactly(requests, length)
            if request is None:
                return 0
            body = worker.answer(request)  # None: out of memory; the tool's frames and allocations are released
            if body is None:
                break
            _send(responses, body)
    except BrokenPipeError:  # the pool is gone
        return 0
    with contextlib.suppress(OSError):
        _send(responses, out_of_memory)
    _flush_stdout()
    os._exit(EXIT_OUT_OF_MEMORY)  # no atexit handlers and no finalizers: they would need memory


if __name__ == "__main__":
    sys.exit(main())
