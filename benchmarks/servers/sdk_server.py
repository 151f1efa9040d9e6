"""The official MCP Python SDK server with the same echo tool: ``python sdk_server.py PORT sse|json|stateless``.

``stateless`` is the SDK's stateless mode (``stateless_http=True, json_response=True``): no session, a fresh
transport per request; the same app also serves the 2026-07-28 wire (any MCP-Protocol-Version header outside
the handshake versions goes to the SDK's modern path).

Runs in its own virtualenv (the benchmark makes it, with the pinned SDK) under uvicorn with uvloop and
httptools, access log off, as its documentation deploys it.
"""

import sys

import uvicorn
from mcp.server.mcpserver import MCPServer

server = MCPServer("bench", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Return the text."""
    return text


if __name__ == "__main__":
    port, mode = int(sys.argv[1]), sys.argv[2]
    if mode not in {"sse", "json", "stateless"}:
        sys.exit(f"mode {mode!r}: sse, json or stateless")
    app = server.streamable_http_app(
        json_response=mode != "sse", stateless_http=mode == "stateless", max_sessions=100_000
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop",
                http="httptools")  # fmt: skip
