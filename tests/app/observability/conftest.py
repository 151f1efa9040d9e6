"""The process's logging, configured for one test onto a file it reads, and put back afterwards."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

from app.observability import access, sink
from app.observability.logging import configure_logging
from app.settings import LogFormat

LONG = 3600.0  # a flush interval no test waits for: what the test reads was flushed by it

Configure = Callable[..., Callable[[], bytes]]


@pytest.fixture
def logging_to_file(tmp_path: Path) -> Iterator[Configure]:
    """``configure(fmt, **options)`` configures the process's logging (as ``python -m app`` does) onto a file; it
    returns ``read()``, which flushes the sink and returns every byte written so far."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config(), access.access_log(), sink.process_sink())
    uvicorns = {name: logging.getLogger(name).level for name in ("uvicorn", "uvicorn.error")}
    opened: list[int] = []

    def configure(fmt: LogFormat = LogFormat.JSON, **options: object) -> Callable[[], bytes]:
        path = tmp_path / f"log-{len(opened)}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        opened.append(fd)
        line_sink = sink.LineSink(fd, interval=LONG)
        configure_logging("INFO", fmt, line_sink=line_sink, **options)  # type: ignore[arg-type]

        def read() -> bytes:
            line_sink.flush()
            return path.read_bytes()

        return read

    try:
        yield configure
    finally:
        configured = sink.process_sink()
        if configured is not None and configured is not saved[4]:
            configured.close(timeout=5)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])
        access.use(saved[3])
        sink.install(saved[4])
        for name, level in uvicorns.items():
            logging.getLogger(name).setLevel(level)
        logging.captureWarnings(False)
        for fd in opened:
            os.close(fd)
