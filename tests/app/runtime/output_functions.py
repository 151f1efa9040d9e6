"""Tool functions that write to their worker's stdout and stderr, for the tests of how the pool logs what a worker
writes (imported in the workers as ``tests.app.runtime.output_functions``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def say(stdout: list[str], stderr: list[str]) -> int:
    """Print ``stdout`` and ``stderr`` (a line each); answer with the worker's pid."""
    for line in stdout:
        print(line)
    for line in stderr:
        print(line, file=sys.stderr)
    return os.getpid()


def last_words(text: str, code: int) -> None:
    """Write ``text`` to stderr and exit at once with ``code`` (no cleanup, as a crash would)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
    os._exit(code)


def flood(lines: int) -> int:
    """Write ``lines`` short lines to stderr."""
    sys.stderr.writelines(f"flood {number}\n" for number in range(lines))
    sys.stderr.flush()
    return lines


def one_long_line(megabytes: int) -> str:
    """Write a line of ``megabytes`` MiB (a megabyte at a time, so the tool never holds much), then a short one."""
    block = "x" * (1024 * 1024)
    for _ in range(megabytes):
        sys.stderr.write(block)
    sys.stderr.write("\nafter the long line\n")
    sys.stderr.flush()
    return "written"


def escape_and_sleep(pid_file: str) -> None:
    """Start a process that leaves the worker's process group (so the pool's kill misses it) and keeps the output
    pipe (its stdout and stderr are the worker's); say its pid, and sleep."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    with open(pid_file, "w") as out:
        out.write(str(child.pid))
    time.sleep(10**6)
