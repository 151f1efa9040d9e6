"""Finding 4, the path the redactor did not cover: tools with ``isolation: process`` run in worker processes whose
stderr (and the stdout a tool prints to) went straight to the server's stderr. A tool's ``print``, a library's log
line or warning, a traceback reached the log raw: unredacted, and not JSON (a line Cloud Logging cannot parse).

Now what a worker writes reaches the log only as the server's own records: one JSON record per line, logger
``erlmcp.worker``, with the worker's pid and the function it runs, through the redactor like every other line; a
line is cut at 4096 bytes (the cut drops the word it falls in, which may be the start of a credential), and the
pool logs at most 200 lines at once and 20 a second, counting the lines it drops. What a tool prints never touches
the worker's protocol: the tool still answers.

A real server as the chart ships it (JSON logs at INFO), whose catalogue holds a secret (an http entry's
``secrets`` file, which the redactor watches) and process-isolated python tools that write the secret and a bearer
token every way a tool can, fail at import naming the secret, die after writing last words, or flood.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import ChartServer, serve_as_chart
from tests.stateless import post

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CUT_AT = 4096  # the documented cap of one line of worker output, in bytes
LINES_BURST = 200  # the documented number of worker lines the pool logs at once
SECRET = f"CATALOGUE-SECRET-{secrets.token_hex(12)}"
CHATTY = "tests.security.chatty_functions"
WORKER = "erlmcp.worker"


def catalogue(root: Path) -> Path:
    secret_file = root / "upstream-token"
    secret_file.write_text(SECRET + "\n")
    path = root / "catalog.yaml"
    path.write_text(
        "allowedHosts: ['127.0.0.1:9']\n"
        "tools:\n"
        "  - name: upstream\n"
        "    kind: http\n"
        "    description: Declares the catalogue's secret.\n"
        '    url: "http://127.0.0.1:9/v?appid={{ secrets.token }}"\n'
        f"    secrets: {{token: {secret_file}}}\n"
        f"  - {{name: chatty, kind: python, description: Chatty., function: '{CHATTY}:chatter', isolation: process}}\n"
        f"  - {{name: last_words, kind: python, description: Dies., function: '{CHATTY}:last_words',\n"
        "     isolation: process}\n"
        "  - {name: fragile, kind: python, description: Fails to import in a worker.,\n"
        "     function: 'tests.security.fragile_functions:configured', isolation: process}\n"
        f"  - {{name: flood, kind: python, description: Floods., function: '{CHATTY}:flood', isolation: process}}\n"
    )
    return path


def start(factory: pytest.TempPathFactory, name: str, *args: str) -> ChartServer:
    root = factory.mktemp(name)
    catalog = catalogue(root)
    return serve_as_chart(factory, name, args=["--catalog", str(catalog), *args],
                          env={"FRAGILE_SECRET_FILE": str(root / "upstream-token")})  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    running = start(tmp_path_factory, "chatty-tools")
    yield running
    running.stop()


def call(server: ChartServer, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(timeout=60) as client:
        response = post(server.mcp, "tools/call", {"name": tool, "arguments": arguments}, key=server.key("admin"),
                        client=client)  # fmt: skip
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def wait_for(server: ChartServer, text: str) -> None:
    """Wait (15 s at most) until the log holds ``text``: a worker's lines are read as it writes them."""
    deadline = time.monotonic() + 15
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"the log never held {text!r}:\n{server.log_text()[-3000:]}"
        time.sleep(0.05)


def worker_lines(server: ChartServer, containing: str = "") -> list[dict[str, Any]]:
    return [r for r in server.log_records() if r.get("logger") == WORKER and containing in str(r.get("message"))]


def assert_clean(server: ChartServer) -> None:
    """Every line of the log is a JSON record, and none holds the secret or an API key (or a prefix of either)."""
    raw = [r["raw"][:300] for r in server.log_records() if "raw" in r]
    assert not raw, f"{len(raw)} lines of the log are not JSON records, e.g.:\n" + "\n".join(raw[:5])
    text = server.log_text()
    for name, value in {"the catalogue's secret": SECRET, "the admin key": server.key("admin")}.items():
        assert value[:12] not in text, f"the log holds {name}"


def test_what_an_isolated_tool_writes_reaches_the_log_as_redacted_json_records(server: ChartServer) -> None:
    token = server.key("admin")  # as a tool that echoes the Authorization header it was handed would
    secret_file = server.env["FRAGILE_SECRET_FILE"]
    result = call(server, "chatty", {"secret_file": secret_file, "token": token, "cut_at": CUT_AT})

    # The tool answered through the protocol, whatever it printed.
    assert result["isError"] is False, result
    answer = result["content"][0]["text"]
    assert answer.startswith("chatted in ")
    pid = int(answer.rsplit(" ", 1)[1])
    wait_for(server, "long: yyy")
    assert_clean(server)

    # Each way of writing became a record of the worker's logger, naming the worker and the function.
    for way in ("stdout: ", "stderr: ", "logging: ", "warnings: ", "long: "):
        records = worker_lines(server, way)
        assert records, f"what the tool wrote to {way!r} is not in the log"
        assert records[0]["pid"] == pid
        assert records[0]["function"] == f"{CHATTY}:chatter"
        assert records[0]["severity"] == "WARNING"
    # What is left says what was there.
    assert "appid=[redacted]" in worker_lines(server, "stdout: ")[0]["message"]
    assert "Bearer [redacted]" in worker_lines(server, "stderr: ")[0]["message"]
    # The overlong line is cut, before the word the cut fell in (the secret's start), and says so.
    long = worker_lines(server, "long: ")[0]
    kept = long["message"]
    assert len(kept.encode()) <= CUT_AT
    assert set(kept.removeprefix("long: ").strip()) == {"y"}, kept[-40:]
    assert long["cut_bytes"] > 100_000


def test_a_tool_that_fails_at_import_or_dies_leaves_its_traceback_and_last_words_in_the_log(
    server: ChartServer,
) -> None:
    secret_file = server.env["FRAGILE_SECRET_FILE"]
    fragile = call(server, "fragile", {})
    died = call(server, "last_words", {"secret_file": secret_file, "token": server.key("admin")})

    assert fragile["isError"] is True
    # The caller is told what failed, not what the exception said (it named the secret): that is in the log.
    assert SECRET[:12] not in fragile["content"][0]["text"], fragile["content"][0]["text"]
    assert "RuntimeError" in fragile["content"][0]["text"]
    assert died["isError"] is True
    assert "exit code 3" in died["content"][0]["text"]
    wait_for(server, "tool worker died")
    wait_for(server, "RuntimeError: the client refuses its configuration")
    assert_clean(server)

    # The import's traceback, line by line, redacted: enough for an operator to see what failed and where.
    assert worker_lines(server, "Traceback (most recent call last)")
    assert worker_lines(server, "fragile_functions.py")
    failure = worker_lines(server, "RuntimeError: the client refuses its configuration")
    assert "appid=[redacted]" in failure[0]["message"]
    assert failure[0]["function"] == "tests.security.fragile_functions:configured"
    # The dead worker's last words, under the pid the pool's record of its death names.
    death = [r for r in server.log_records() if r.get("message", "").startswith("tool worker died")]
    last = worker_lines(server, "fatal: lost the upstream")
    assert last, "the dead worker's last words are not in the log"
    assert last[0]["pid"] == death[0]["pid"]
    assert "appid=[redacted]" in last[0]["message"]
    assert "Bearer [redacted]" in last[0]["message"]


def test_a_tool_that_floods_its_output_cannot_flood_the_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = start(tmp_path_factory, "flooding-tool", "--tool-workers", "1")
    try:
        result = call(server, "flood", {"lines": 20_000})
        assert result["content"][0]["text"] == "flooded"
        assert call(server, "upstream", {})["isError"] is True  # the server serves on (the upstream is closed)
    finally:
        server.stop()  # the worker's output ends with it: the last count of dropped lines is written

    assert_clean(server)
    logged = worker_lines(server, "flood line")
    dropped = [r for r in server.log_records() if r.get("logger") == WORKER and "dropped_lines" in r]
    assert len(logged) <= 10 * LINES_BURST, f"{len(logged)} of the 40000 lines the tool wrote reached the log"
    assert dropped, "the log does not say that lines were dropped"
    # Every line the tool wrote was either logged or counted as dropped.
    assert len(logged) + sum(r["dropped_lines"] for r in dropped) == 40_000
