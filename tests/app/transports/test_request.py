"""The MCP endpoint's request reads each header once: lookups answer as Starlette's do (names in any case, the
first of a repeated header), for the headers the endpoint and the gate read."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from app.transports.request import IndexedHeaders, McpRequest

RAW = [
    (b"host", b"127.0.0.1:8080"),
    (b"authorization", b"Bearer first"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer second"),  # repeated: the first one counts
    (b"x-caf\xe9", b"\xe9t\xe9"),  # latin-1, as ASGI servers hand it
]
SCOPE = {"type": "http", "method": "POST", "path": "/mcp", "headers": RAW}


@pytest.mark.parametrize(
    "name", ["host", "Host", "AUTHORIZATION", "authorization", "content-type", "x-café", "X-CAFÉ", "accept", ""]
)
def test_a_lookup_answers_as_starlettes_headers_do(name: str) -> None:
    starlette, indexed = Headers(scope=dict(SCOPE)), IndexedHeaders(dict(SCOPE))
    assert indexed.get(name) == starlette.get(name)
    assert (name in indexed) == (name in starlette)
    if name in starlette:
        assert indexed[name] == starlette[name]
    else:
        with pytest.raises(KeyError):
            indexed[name]


def test_the_request_reads_its_headers_once_and_keeps_them() -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    request = McpRequest(dict(SCOPE), receive)
    assert request.headers is request.headers
    assert request.headers.get("authorization") == "Bearer first"
    assert request.headers.getlist("authorization") == ["Bearer first", "Bearer second"]  # the rest of Starlette's
