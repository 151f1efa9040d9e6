"""Tool functions the worker-pool tests run in worker processes (imported there as ``tests.app.runtime.functions``)."""

from __future__ import annotations

import asyncio
import datetime
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from app.features.tools import ToolError


class Point(BaseModel):
    x: int
    y: int


@dataclass
class Stamp:
    pid: int
    started: float
    ended: float
    at: datetime.datetime


def add(a: int, b: int) -> int:
    return a + b


async def add_later(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def point(x: int, y: int) -> Point:
    return Point(x=x, y=y)


def stamp(seconds: float) -> Stamp:
    """Sleep, and say in which process and over which span of the (system-wide) monotonic clock."""
    started = time.monotonic()
    time.sleep(seconds)
    return Stamp(pid=os.getpid(), started=started, ended=time.monotonic(), at=datetime.datetime(2024, 1, 2, 3, 4, 5))


def pid() -> int:
    return os.getpid()


def exit_now(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the working directory
    os.kill(os.getpid(), signal.SIGSEGV)


def exhaust_memory() -> int:
    hoard = []
    while True:
        hoard.append(b"x" * (10 * 1024 * 1024))


def sleep_forever() -> None:
    time.sleep(10**6)


async def sleep_forever_async() -> None:
    await asyncio.sleep(10**6)


def refuse(reason: str) -> None:
    raise ToolError(reason)


def fail() -> None:
    raise ValueError("the input was not what I expected")


def chatty() -> str:
    """Print to stdout (several ways) and stderr, and read stdin, before answering."""
    print("hello from the tool")
    print("x" * 100_000, end="")
    sys.stdout.flush()
    os.write(1, b"\x00\x00\x00\x05raw bytes on fd 1\n")
    print("to stderr", file=sys.stderr)
    return f"done, stdin gave {sys.stdin.read()!r}"


def not_json() -> Any:
    return object()


def huge(megabytes: int) -> str:
    return "x" * (megabytes * 1024 * 1024)


def threads(count: int) -> int:
    """Start ``count`` threads that each allocate a little and wait for the others: the memory limit must leave
    room for them."""
    import threading

    barrier = threading.Barrier(count + 1, timeout=10)

    def work() -> None:
        _ = [bytes(1000) for _ in range(1000)]
        barrier.wait()

    started = [threading.Thread(target=work) for _ in range(count)]
    for thread in started:
        thread.start()
    barrier.wait()
    for thread in started:
        thread.join()
    return count


class Tools:
    @staticmethod
    def nested(word: str) -> str:
        return word.upper()


NOT_CALLABLE = 42


def spawn_and_sleep(pid_file: str) -> None:
    """Start a child process (it joins the worker's process group), say its pid, and sleep forever."""
    import subprocess

    child = subprocess.Popen(["sleep", "1000"])
    with open(pid_file, "w") as out:
        out.write(str(child.pid))
    time.sleep(10**6)


def map_memory(megabytes: int) -> int:
    """Map anonymous memory: over the limit this is an OSError (ENOMEM), not a MemoryError."""
    import mmap

    with mmap.mmap(-1, megabytes * 1024 * 1024) as mapped:
        return len(mapped)
