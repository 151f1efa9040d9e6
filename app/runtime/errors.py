"""The exception a tool raises to end its call with a message for the model.

It lives here, in a module that imports nothing, so that a tool run in a worker process can raise it without
loading the server's feature modules into every worker (tens of megabytes under the worker's memory limit).
``app.features.tools`` re-exports it: ``from app.features.tools import ToolError`` works the same.
"""

from __future__ import annotations

__all__ = ["ToolError"]


class ToolError(Exception):
    """Raised by a tool to end its call with ``isError: true`` and this message for the model to read."""
