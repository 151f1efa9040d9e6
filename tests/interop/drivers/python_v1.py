"""Driver of the interop matrix for the Python SDK ``mcp`` 1.x (``ClientSession``), run by that version's own
interpreter (``.tools/clients/python-mcp-<version>/bin/python``). What every Python driver does (the command line,
the steps, the report) is in python_steps.py; this file says how 1.x opens a session.

The same lines serve 1.9.4, 1.12.4 and 1.30.0. 1.30.0 deprecates ``streamablehttp_client(url, headers=...)`` for
``streamable_http_client(url, http_client=...)``; both build the same transport, and the new one is used where it
exists, as a user of that version would.

No WebSocket: ``websocket_client(url)`` of 1.x takes neither headers nor subprotocols, so it cannot present an
API key.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the project's mypy sees this folder as part of the tests package
    from tests.interop.drivers.python_steps import STEP_SECONDS, Library, Watch, drive
else:  # a client's interpreter runs this file as a script, with this folder first on sys.path
    from python_steps import STEP_SECONDS, Library, Watch, drive

mcp: Any = importlib.import_module("mcp")
streamable_http: Any = importlib.import_module("mcp.client.streamable_http")
sse: Any = importlib.import_module("mcp.client.sse")
stdio: Any = importlib.import_module("mcp.client.stdio")


def connection(options: argparse.Namespace, key: str, watch: Watch) -> AbstractAsyncContextManager[Any]:
    """The transport's streams (read, write[, session id]) for a client presenting ``key``."""
    headers = {"X-API-Key": key}
    if options.transport == "streamable-http":
        url = f"{options.url}/mcp"
        if hasattr(streamable_http, "streamable_http_client"):  # 1.30.0: the headers go on the httpx client
            return _streamable_http(url, watch.http_client(headers=headers))
        return streamable_http.streamablehttp_client(  # type: ignore[no-any-return]
            url, headers=headers, httpx_client_factory=watch.http_client
        )
    if options.transport == "sse":
        return sse.sse_client(f"{options.url}/sse", headers=headers)  # type: ignore[no-any-return]
    command = json.loads(options.stdio_command)
    parameters = stdio.StdioServerParameters(
        command=command[0], args=command[1:], env={**os.environ, **json.loads(options.stdio_env)}
    )
    return stdio.stdio_client(parameters)  # type: ignore[no-any-return]


@asynccontextmanager
async def _streamable_http(url: str, http_client: Any) -> AsyncIterator[Any]:
    async with http_client, streamable_http.streamable_http_client(url, http_client=http_client) as streams:
        yield streams


@asynccontextmanager
async def opened(options: argparse.Namespace, key: str, watch: Watch) -> AsyncIterator[tuple[Any, str]]:
    """An initialized session of a client presenting ``key``, and the protocol version it negotiated."""
    timeout = timedelta(seconds=STEP_SECONDS)
    async with (
        connection(options, key, watch) as streams,
        mcp.ClientSession(
            streams[0], streams[1], read_timeout_seconds=timeout, message_handler=watch.on_message
        ) as session,
    ):
        yield session, str((await session.initialize()).protocolVersion)


if __name__ == "__main__":
    drive(Library(open=opened, modes=(None, "legacy")), description=(__doc__ or "").split("\n\n")[0])
