"""Tool functions that write what they should not where they should not, run in worker processes
(``isolation: process``) and imported there as ``tests.security.chatty_functions``: the tool's own prints, a
library's log line and warning, an overlong line, a flood, and last words before the worker dies."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path


def chatter(secret_file: str, token: str, cut_at: int) -> str:
    """Write the secret held in ``secret_file`` and the bearer ``token`` every way a tool can (stdout, stderr, a
    library's logger, a warning), then a line longer than ``cut_at`` bytes whose cut falls inside the secret; answer
    with the worker's pid."""
    secret = Path(secret_file).read_text().strip()
    print(f"stdout: calling the upstream with appid={secret}")
    print(f"stderr: retrying with Authorization: Bearer {token}", file=sys.stderr)
    logging.getLogger("vendor.client").warning("logging: the upstream refused the key %s", secret)
    warnings.warn(f"warnings: the appid parameter {secret} is deprecated", UserWarning, stacklevel=1)
    head = "long: "
    # The secret starts 4 bytes before the cut, and the line goes on far beyond it.
    sys.stderr.write(head + "y" * (cut_at - len(head) - 5) + " " + secret + " " + "z" * 100_000 + "\n")
    sys.stderr.flush()
    return f"chatted in {os.getpid()}"


def last_words(secret_file: str, token: str) -> None:
    """Write a line with the secret and the token to stderr, and die as a crashing extension would."""
    secret = Path(secret_file).read_text().strip()
    sys.stderr.write(f"fatal: lost the upstream (appid={secret}, Authorization: Bearer {token}); giving up\n")
    sys.stderr.flush()
    os._exit(3)


def flood(lines: int) -> str:
    """Write ``lines`` lines to stdout and to stderr."""
    for number in range(lines):
        print(f"flood line {number}")
        print(f"flood line {number} on stderr", file=sys.stderr)
    return "flooded"
