"""The ceiling: one bare FastAPI route that parses the same JSON-RPC body with orjson and answers it.

No MCP layer at all (no sessions, no validation): what FastAPI on uvicorn can do for this request shape.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI()
INITIALIZED: dict[str, Any] = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "c", "version": "1"},
}


@app.post("/mcp")
async def mcp(request: Request) -> Response:
    message = orjson.loads(await request.body())
    if "id" not in message:
        return Response(status_code=202)
    result: dict[str, Any]
    if message["method"] == "initialize":
        result = INITIALIZED
    else:
        result = {"content": [{"type": "text", "text": message["params"]["arguments"]["text"]}], "isError": False}
    return Response(orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}),
                    media_type="application/json")  # fmt: skip


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, loop="uvloop",
                http="httptools")  # fmt: skip
