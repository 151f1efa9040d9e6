"""A tool module that imports in the server (which reads its type hints) but raises when a worker process imports
it, naming the catalogue's secret (read from the file ``$FRAGILE_SECRET_FILE`` names), as a client library that
refuses its configuration at import would. Imported as ``tests.security.fragile_functions``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_main = sys.modules.get("__main__")
if getattr(getattr(_main, "__spec__", None), "name", "") == "app.runtime.worker":
    _secret = Path(os.environ["FRAGILE_SECRET_FILE"]).read_text().strip()
    raise RuntimeError(f"the client refuses its configuration: appid={_secret} is not valid here")


def configured() -> str:
    return "never reached in a worker"
