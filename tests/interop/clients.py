"""The real MCP clients of the interop matrix, pinned (scripts/install-clients.sh, ``make clients``), and how a
test runs one: a driver per client family, in the client's own interpreter, as a subprocess.

The drivers' contract (tests/interop/drivers/: ``python_v1.py`` for ``mcp`` 1.x, ``python_v2.py`` for 2.x,
``typescript.mjs`` for the TypeScript SDK):

    <interpreter> <driver> --url http://127.0.0.1:PORT --transport streamable-http|sse|stdio|websocket --key KEY
        [--mode legacy|auto] [--stdio-command JSON-ARRAY] [--stdio-env JSON-OBJECT] [--steps a,b,c]
        [--cut-url URL]

- streamable-http connects to ``{url}/mcp``, sse (the legacy HTTP+SSE transport) to ``{url}/sse``, websocket to
  ``ws://.../ws``; stdio spawns ``--stdio-command`` with ``--stdio-env`` merged into the driver's environment.
- The key goes as ``X-API-Key`` (or ``Authorization: Bearer``) on the HTTP transports, and on WebSocket as a
  second subprotocol ``base64url.bearer.authorization.k8s.io.<base64url(key), no padding>`` next to ``mcp``.
- It initializes (or, 2.x in ``auto`` mode, discovers), then runs ``--steps`` in order, on one session: ``tools``
  (tools/list), ``call`` (test_simple_text), ``resource`` (test://static-text), ``prompt``
  (test_prompt_with_arguments with arg1=a, arg2=b), ``progress`` (test_tool_with_progress with a progress
  callback), ``reconnection`` (test_reconnection, whose stream the server may end mid-call), ``list_changed``
  (below); then ``unauthorized``, a connection of its own with a wrong key.
- ``list_changed``: wait until the GET stream is open (streamable HTTP), then call test_trigger_tool_change three
  times; before the 2nd and the 3rd call, ``POST --cut-url`` (when given) and wait for its answer; after each
  call wait up to 5 s for its notifications/tools/list_changed. The value is how many arrived.
- It prints exactly one JSON object on stdout (logs go to stderr) and exits 0 even when steps fail: ``client``,
  ``version``, ``transport``, ``mode``, ``protocol`` (negotiated), one key per step run (its answer, or
  ``{"error": "<type>: <message>"}``), and ``client_errors``: what the client library reported as errors
  meanwhile (Python: ERROR records on the root logger, such as "Error parsing SSE message"; TypeScript: onerror
  callbacks and console.error), not counting the wrong-key connection's.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

CLIENTS_DIR = ROOT / ".tools" / "clients"
DRIVERS = Path(__file__).resolve().parent / "drivers"
NODE = ROOT / ".tools" / "bin" / "node22"
TS_SDK = CLIENTS_DIR / "typescript-sdk" / "node_modules" / "@modelcontextprotocol" / "sdk"
DRIVER_SECONDS = 60.0
INSTALL = "run `make clients` (scripts/install-clients.sh)"

# What a case connects over; stdio spawns a server of its own.
STREAMABLE_HTTP, SSE, STDIO, WEBSOCKET = "streamable-http", "sse", "stdio", "websocket"


@dataclass(frozen=True)
class Client:
    """One pinned client: the interpreter and driver that run it, and what it is known to do."""

    family: str  # as the driver reports it: "python-mcp" or "typescript-sdk"
    version: str
    interpreter: Path
    driver: Path
    installed: tuple[Path, ...]  # what scripts/install-clients.sh puts in place for it
    # How many times in a row its GET stream comes back (GET with Last-Event-ID) after a cut; 0: never.
    get_stream_cuts: int

    def missing(self) -> list[Path]:
        return [path for path in (self.interpreter, *self.installed) if not path.exists()]


def python_client(version: str, *, get_stream_cuts: int) -> Client:
    interpreter = CLIENTS_DIR / f"python-mcp-{version}" / "bin" / "python"
    driver = DRIVERS / ("python_v2.py" if version.startswith("2.") else "python_v1.py")
    return Client("python-mcp", version, interpreter, driver, (), get_stream_cuts)


# mcp 1.9/1.12 never reconnect a stream: they leave a POST stream that ended without its answer to time out,
# and return from their GET stream's loop (streamable_http.py, handle_get_stream). 1.30.0 and 2.3.0 reconnect
# with Last-Event-ID, but their GET loop counts failed ends and resets the count only on a clean end
# (`attempt = 0` after `async for`), never after a reconnection that worked: a second cut of the same stream
# reaches MAX_RECONNECTION_ATTEMPTS (2) and the stream is gone for good. The TypeScript SDK schedules each
# reconnection with a fresh count (`_scheduleReconnection(..., 0)` in streamableHttp.js), so it comes back from
# any number of cuts; the matrix cuts it twice.
MCP_1_9 = python_client("1.9.4", get_stream_cuts=0)
MCP_1_12 = python_client("1.12.4", get_stream_cuts=0)
MCP_1_30 = python_client("1.30.0", get_stream_cuts=1)
MCP_2_3 = python_client("2.3.0", get_stream_cuts=1)
TYPESCRIPT = Client("typescript-sdk", "1.32.2", NODE, DRIVERS / "typescript.mjs", (TS_SDK,), get_stream_cuts=2)


@dataclass(frozen=True)
class Case:
    """A client over one transport (in one mode, for ``mcp`` 2.x), and the protocol version it must negotiate."""

    client: Client
    transport: str
    protocol: str
    mode: str | None = None

    @property
    def id(self) -> str:
        family = "python" if self.client.family == "python-mcp" else "ts"
        return "-".join(filter(None, [family, self.client.version, self.transport, self.mode]))

    @property
    def cuts(self) -> int:
        """How many cuts of its GET stream the list_changed step gets (0: the step does not apply). Only
        streamable HTTP has a GET stream; 2026-07-28 (``auto``) has none: changes come by subscriptions/listen."""
        if self.transport != STREAMABLE_HTTP or self.protocol == "2026-07-28":
            return 0
        return min(self.client.get_stream_cuts, 2)


def _cases() -> list[Case]:
    # Python: no WebSocket. 1.x's websocket_client(url) sends no headers and only the subprotocol "mcp", so it
    # cannot present a key; 2.x has no WebSocket client. The legacy SSE transport negotiates what the client asks,
    # as initialize does on /mcp.
    cases = [
        Case(client, transport, protocol)
        for client, protocol in ((MCP_1_9, "2025-03-26"), (MCP_1_12, "2025-06-18"), (MCP_1_30, "2025-11-25"))
        for transport in (STREAMABLE_HTTP, SSE, STDIO)
    ]
    # mcp 2.x: both modes over streamable HTTP; SSE and stdio in its default mode (auto), which discovers
    # 2026-07-28 there too.
    cases += [
        Case(MCP_2_3, STREAMABLE_HTTP, "2025-11-25", "legacy"),
        Case(MCP_2_3, STREAMABLE_HTTP, "2026-07-28", "auto"),
        Case(MCP_2_3, SSE, "2026-07-28", "auto"),
        Case(MCP_2_3, STDIO, "2026-07-28", "auto"),
    ]
    cases += [Case(TYPESCRIPT, transport, "2025-11-25") for transport in (STREAMABLE_HTTP, SSE, STDIO, WEBSOCKET)]
    return cases


CASES = _cases()


@dataclass
class Report:
    """What a driver said: its JSON report, and its command and stderr to explain a failure with."""

    case: Case
    values: dict[str, Any]
    command: list[str]
    stderr: str = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.values.get(key)

    def explain(self) -> str:
        """The report, the command that made it and the end of the driver's stderr, for an assertion message."""
        return (
            f"{self.case.id}: {json.dumps(self.values)[:3000]}\n--- command: {shlex.join(self.command)}\n"
            f"--- driver stderr (tail):\n{self.stderr[-3000:]}"
        )


def run_driver(
    case: Case,
    url: str,
    key: str,
    *,
    steps: Sequence[str],
    stdio_command: Sequence[str] = (),
    stdio_env: Mapping[str, str] | None = None,
    cut_url: str | None = None,
    timeout: float = DRIVER_SECONDS,
) -> Report:
    """Run the case's driver to the end and parse its report. Raises AssertionError, with the driver's stderr,
    when the client is not installed, the driver outlives ``timeout``, or it prints no JSON report."""
    client = case.client
    if missing := client.missing():
        raise AssertionError(f"{client.family} {client.version} is not installed ({missing[0]} is missing): {INSTALL}")
    command = [str(client.interpreter), str(client.driver), "--url", url, "--transport", case.transport]
    command += ["--key", key, "--steps", ",".join(steps)]
    if case.mode is not None:
        command += ["--mode", case.mode]
    if case.transport == STDIO:
        command += [
            "--stdio-command",
            json.dumps(list(stdio_command)),
            "--stdio-env",
            json.dumps(dict(stdio_env or {})),
        ]
    if cut_url is not None:
        command += ["--cut-url", cut_url]
    # The driver's environment: no ERLMCP_* of this process (a stdio server gets exactly --stdio-env over it).
    env = {name: value for name, value in os.environ.items() if not name.startswith("ERLMCP_")}
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        raise AssertionError(f"{case.id}: the driver ran over {timeout} s\n{(stderr or '')[-3000:]}") from None
    lines = done.stdout.strip().splitlines()
    try:
        values = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        values = None
    if done.returncode != 0 or not isinstance(values, dict):
        raise AssertionError(
            f"{case.id}: the driver exited {done.returncode} without a report\n"
            f"stdout: {done.stdout[-1000:]}\nstderr: {done.stderr[-3000:]}"
        )
    return Report(case, values, command, done.stderr)
