"""Driver of the interop matrix for the Python SDK ``mcp`` 2.x (``mcp.Client``), run by that version's own
interpreter (``.tools/clients/python-mcp-<version>/bin/python``). What every Python driver does (the command line,
the steps, the report) is in python_steps.py; this file says how 2.x opens a session.

``--mode`` is the client's own ``mode=``: ``legacy`` initializes (a handshake revision: 2025-11-25 at most);
``auto``, its default, asks ``server/discover`` first and speaks 2026-07-28 to a server that answers it.

Credentials: ``Client(url)`` takes no headers, so the key goes on the httpx client of a transport, which
``Client`` takes in place of a URL (``streamable_http_client(url, http_client=...)``; ``sse_client`` still takes
``headers=``).

No WebSocket: 2.x has no WebSocket client.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the project's mypy sees this folder as part of the tests package
    from tests.interop.drivers.python_steps import STEP_SECONDS, Library, Watch, drive
else:  # a client's interpreter runs this file as a script, with this folder first on sys.path
    from python_steps import STEP_SECONDS, Library, Watch, drive

mcp: Any = importlib.import_module("mcp")
streamable_http: Any = importlib.import_module("mcp.client.streamable_http")
sse: Any = importlib.import_module("mcp.client.sse")
stdio: Any = importlib.import_module("mcp.client.stdio")


def server_of(options: argparse.Namespace, key: str, watch: Watch) -> Any:
    """What ``Client`` connects to: a transport presenting ``key``, or the stdio server's parameters."""
    headers = {"X-API-Key": key}
    if options.transport == "streamable-http":
        return _streamable_http(f"{options.url}/mcp", watch.http_client(headers=headers))
    if options.transport == "sse":
        return sse.sse_client(f"{options.url}/sse", headers=headers)
    command = json.loads(options.stdio_command)
    return stdio.StdioServerParameters(
        command=command[0], args=command[1:], env={**os.environ, **json.loads(options.stdio_env)}
    )


@asynccontextmanager
async def _streamable_http(url: str, http_client: Any) -> AsyncIterator[Any]:
    async with http_client, streamable_http.streamable_http_client(url, http_client=http_client) as streams:
        yield streams


@asynccontextmanager
async def opened(options: argparse.Namespace, key: str, watch: Watch) -> AsyncIterator[tuple[Any, str]]:
    """A connected ``mcp.Client`` of a client presenting ``key``, and the protocol version it negotiated."""
    client = mcp.Client(
        server_of(options, key, watch),
        mode=options.mode,
        read_timeout_seconds=STEP_SECONDS,
        message_handler=watch.on_message,
    )
    async with client:
        yield client, str(client.protocol_version)


if __name__ == "__main__":
    drive(Library(open=opened, modes=("auto", "legacy")), description=(__doc__ or "").split("\n\n")[0])
