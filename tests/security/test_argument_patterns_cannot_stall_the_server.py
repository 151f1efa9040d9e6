"""A tool argument checked against a catastrophic ``pattern`` cannot stall the server (red-team finding 5).

A catalogue tool's ``inputSchema`` may hold a regular expression that backtracks exponentially in a backtracking
engine, such as ``^([a-zA-Z0-9]+\\s?)*$`` on ``"a" * 40 + "!"`` (hours in Python's ``re``). No argument may ever
reach such an engine on the event loop: the call is refused at once as invalid arguments, with a message that
names the argument and says what was wrong (in JSON notation), and ``/livez`` answers while the call is in
progress. The same holds for a pattern on the arguments' names (``propertyNames``) and on an array's items.

Over the MCP specification's rule (2025-11-25, SEP-1303), arguments that do not match the input schema are a tool
error (``isError: true``) naming the problem, not a JSON-RPC error.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.security.conftest import ChartServer, serve_as_chart
from tests.stateless import post

pytestmark = pytest.mark.slow

EVIL = r"^([a-zA-Z0-9]+\s?)*$"  # exponential backtracking on a long run of letters followed by a non-match
LONG = "a" * 40 + "!"
TIMEOUT = 20.0  # liveness bound of the call: in Python's re it would take hours
LIVEZ_TIMEOUT = 5.0
PROBING_SECONDS = 1.0  # how long /livez is probed while the call runs

CATALOG = {
    "tools": [
        {
            "name": "echo",
            "description": "Returns its text; the text must be words separated by single spaces.",
            "builtin": "echo",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "pattern": EVIL}},
                "required": ["text"],
            },
        },
        {
            "name": "tagged",
            "description": "Returns its text; every tag must be words separated by single spaces.",
            "builtin": "echo",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string"}, "tags": {"type": "array", "items": {"pattern": EVIL}}},
                "required": ["text"],
            },
        },
        {
            "name": "named",
            "description": "Returns its text; argument names must be words separated by single spaces.",
            "builtin": "echo",
            "inputSchema": {"type": "object", "propertyNames": {"pattern": EVIL}},
        },
    ]
}
# (tool, arguments, what the message names first)
CALLS: dict[str, tuple[str, dict[str, Any], str]] = {
    "a-pattern-on-an-argument": ("echo", {"text": LONG}, f'text: "{LONG}" does not match "'),
    "a-pattern-on-array-items": ("tagged", {"text": "hi", "tags": ["ok", LONG]}, f'tags/1: "{LONG}" does not match "'),
    "a-pattern-on-argument-names": ("named", {LONG: 1, "text": "hi"}, f'(arguments): property name "{LONG}" does not'),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    root = tmp_path_factory.mktemp("patterns-catalog")
    catalog = Path(root) / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    running = serve_as_chart(tmp_path_factory, "patterns", args=["--catalog", str(catalog)])
    yield running
    running.stop()


def call(server: ChartServer, tool: str, arguments: dict[str, Any]) -> httpx.Response:
    return post(server.mcp, "tools/call", {"name": tool, "arguments": arguments}, key=server.key("admin"),
                timeout=TIMEOUT)  # fmt: skip


def test_a_valid_argument_still_passes_the_pattern(server: ChartServer) -> None:
    answered = call(server, "echo", {"text": "hello big world"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["result"]["content"] == [{"type": "text", "text": "hello big world"}]


@pytest.mark.parametrize("case", list(CALLS))
def test_an_argument_against_a_catastrophic_pattern_is_refused_at_once_and_livez_answers_meanwhile(
    server: ChartServer, case: str
) -> None:
    tool, arguments, named = CALLS[case]
    with ThreadPoolExecutor(max_workers=1) as pool:
        calling = pool.submit(call, server, tool, arguments)
        probing_until = time.monotonic() + PROBING_SECONDS
        while True:  # while the call is in progress (and a little after): the server's event loop is free
            try:
                alive = httpx.get(f"{server.url}/livez", timeout=LIVEZ_TIMEOUT)
            except httpx.TimeoutException:
                pytest.fail(f"/livez did not answer within {LIVEZ_TIMEOUT:g} s while the call was in progress")
            assert alive.status_code == 200
            if calling.done() or time.monotonic() > probing_until:
                break
            time.sleep(0.1)
        try:
            answered = calling.result(timeout=TIMEOUT + 5)
        except httpx.TimeoutException:
            pytest.fail(f"the call was not answered within {TIMEOUT:g} s")
    assert answered.status_code == 200, answered.text
    result = answered.json()["result"]
    assert result["isError"] is True, result
    text = result["content"][0]["text"]
    assert text.startswith(f"Invalid arguments for tool {tool!r}: {named}"), text
    assert "'" + LONG not in text  # JSON notation ("aaa"), not Python's ('aaa')
