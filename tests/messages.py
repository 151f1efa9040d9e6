"""Hypothesis strategies for malformed and mutated MCP messages, shared by the property tests (in-process over
HTTP in tests/app/test_malformed_messages.py, against a real server over every transport in tests/security/)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

METHODS = [
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list", "resources/read",
    "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get", "completion/complete",
    "logging/setLevel", "server/discover", "notifications/initialized", "notifications/cancelled",
    "tasks/get", "tasks/list", "tasks/result", "tasks/cancel", "tasks/update",
]  # fmt: skip
# Not subscriptions/listen: a well-formed one opens a stream that lasts as long as the client wants, by design.
# Codes for bad input (never -32603, which would mean the server itself failed), and tool-level refusals.
CLIENT_ERRORS = {-32700, -32600, -32601, -32602, -32002, -32020, -32021, -32022}
INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
STATELESS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
PARAM_NAMES = ["name", "uri", "arguments", "cursor", "level", "ref", "argument", "protocolVersion", "requestState",
               "inputResponses", "taskId", "_meta", "capabilities", "clientInfo"]  # fmt: skip
params = st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=8), json_values, max_size=5)
ids = st.none() | st.integers() | st.text(max_size=8) | st.booleans() | st.floats(allow_nan=False) | st.just([1])


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request or notification of a real method whose id and params are anything."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": draw(st.sampled_from(METHODS)), "params": draw(params)}
    request_id = draw(ids)
    if request_id is not None:
        body["id"] = request_id
    return body


envelopes = st.dictionaries(
    st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]), json_values, max_size=6
)


def _dumps(value: Any) -> bytes:
    """JSON text as a client library would write it (the standard library's: integers of any size, lone
    surrogates escaped), which orjson would refuse to write."""
    return json.dumps(value).encode()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# One malformed message as it goes on the wire: a mutated request, a mutated envelope, JSON that is no message,
# text that is no JSON, arbitrary bytes, a deeply nested array, a batch of any of those.
raw_messages: st.SearchStrategy[bytes] = st.one_of(
    requests().map(_dumps),
    envelopes.map(_dumps),
    json_values.map(_dumps),
    st.text(max_size=120).map(str.encode),
    st.binary(max_size=120),
    st.integers(min_value=2, max_value=200_000).map(_nested),
    st.lists(requests() | envelopes, max_size=5).map(_dumps),
)
