"""Tool functions the security tests run in worker processes (``isolation: process``), imported there as
``tests.security.isolated_functions``."""

from __future__ import annotations

import os
import time
from pathlib import Path


def mark_and_sleep(marker: str, seconds: float) -> int:
    """Write this worker's pid to ``marker`` (so a test knows the call has reached its worker), sleep, return it."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()
