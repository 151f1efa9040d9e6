"""What the Python drivers of the interop matrix share (python_v1.py for ``mcp`` 1.x, python_v2.py for 2.x): the
command line, the steps of one session, the wrong-key connection, the report, and the record of what the client
library logged. Each driver says only how its version opens a session (:class:`Library`).

A driver runs under a client's own interpreter (``.tools/clients/python-mcp-<version>/bin/python``), which finds
this module next to it (a script's folder is the first entry of ``sys.path``): it imports the standard library,
``anyio`` and the client library only, never ``app`` or ``tests``. The library is imported by name at run time and
typed ``Any``: the same lines serve every version, whose signatures differ, and this file is checked by the
project's mypy, whose own ``mcp`` is 2.x.

Command line and report: the matrix contract, in tests/interop/clients.py. One session runs the steps asked for;
then the wrong-key connection runs alone, so that what the library logs about the refusal is the refusal's answer,
not a ``client_errors`` entry.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import anyio

__all__ = ["STEP_SECONDS", "Library", "Watch", "drive"]

STEPS = ("tools", "call", "resource", "prompt", "progress", "reconnection", "list_changed", "unauthorized")
STEP_SECONDS = 10.0  # the longest a step may take (a call whose stream the server ended, never resumed)
NOTIFICATION_SECONDS = 5.0  # how long a list_changed may take to arrive (the client reconnects after ~1 s)
SETTLE_SECONDS = 0.5  # after the third change: time for a duplicate to arrive, were one sent
QUIET_SECONDS = 3.0  # before the first change: many keep-alives, and longer than a reader waits for a missing writer
LIST_CHANGED = "notifications/tools/list_changed"
WRONG_KEY = "wrong-key-0123456789abcdef"

httpx_utils: Any = importlib.import_module("mcp.shared._httpx_utils")


class Recorder(logging.Handler):
    """Every ERROR (or worse) record any logger writes, as one short line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += f" ({describe(record.exc_info[1])})"
        self.lines.append(line[:400])

    def summary(self) -> list[str]:
        """The lines, each once, with how often it came when more than once (a keep-alive mistaken for a
        message comes every few hundred milliseconds)."""
        counted = Counter(self.lines)
        return [line if counted[line] == 1 else f"{line} [{counted[line]} times]" for line in counted]


class Watch:
    """What the client did that a step waits for: the SSE streams it opened with GET (on streamable HTTP, the
    stream notifications outside a call arrive on), and the notifications/tools/list_changed it received."""

    def __init__(self) -> None:
        self.get_streams = 0
        self.changes = 0

    async def on_message(self, message: Any) -> None:
        """The session's message handler: 1.x hands it a ``ServerNotification`` (the message in ``root``), 2.x the
        notification itself."""
        if getattr(getattr(message, "root", message), "method", None) == LIST_CHANGED:
            self.changes += 1

    async def on_response(self, response: Any) -> None:
        if response.request.method == "GET" and response.status_code == 200:
            self.get_streams += 1

    def http_client(self, **settings: Any) -> Any:
        """The library's own httpx client, with ``on_response`` among its hooks."""
        client = httpx_utils.create_mcp_http_client(**settings)
        hooks = client.event_hooks
        hooks["response"] = [*hooks.get("response", []), self.on_response]
        client.event_hooks = hooks
        return client


@dataclass(frozen=True)
class Library:
    """How one major version of the library opens a session: ``open(options, key, watch)`` is an initialized
    session of a client presenting ``key`` and the protocol version it negotiated; ``modes`` are its ``--mode``
    values, the first the default (None: the version has no modes)."""

    open: Callable[[argparse.Namespace, str, Watch], AbstractAsyncContextManager[tuple[Any, str]]]
    modes: Sequence[str | None]


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, looking through task groups that hold a single one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no answer in time'}"[:400]


def arguments(library: Library, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True)
    parser.add_argument("--transport", required=True, choices=["streamable-http", "sse", "stdio"])
    parser.add_argument("--key", required=True)
    parser.add_argument("--mode", choices=[mode for mode in library.modes if mode], default=library.modes[0])
    parser.add_argument("--stdio-command", default="[]")
    parser.add_argument("--stdio-env", default="{}")
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--cut-url")
    return parser.parse_args()


def text_of(result: Any) -> str:
    """The text of a tool result's, a resource's or a prompt's first content (a tool error says so)."""
    if hasattr(result, "contents"):
        return str(result.contents[0].text)
    if hasattr(result, "messages"):
        return str(result.messages[0].content.text)
    text = str(result.content[0].text) if result.content else ""
    failed = getattr(result, "is_error", None) or getattr(result, "isError", None)  # 2.x, 1.x
    return f"tool error: {text}" if failed else text


async def run_steps(
    session: Any, options: argparse.Namespace, steps: list[str], watch: Watch, report: dict[str, Any]
) -> None:
    """Each step's answer, or its failure, as its value in the report."""

    async def text(answer: Awaitable[Any]) -> str:
        return text_of(await answer)

    async def tools() -> list[str]:
        return [tool.name for tool in (await session.list_tools()).tools]

    async def progress() -> list[float]:
        seen: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            seen.append(value)

        await session.call_tool("test_tool_with_progress", {}, progress_callback=on_progress)
        return seen

    async def list_changed() -> int:
        if options.transport == "streamable-http":  # the changes arrive on the GET stream, opened in the background
            while not watch.get_streams:
                await anyio.sleep(0.02)
        await anyio.sleep(QUIET_SECONDS)  # a quiet stream (keep-alives only) must stay open for the first change
        for wanted in (1, 2, 3):
            if wanted > 1 and options.cut_url:  # the test's proxy cuts the GET stream, or not
                await anyio.to_thread.run_sync(ask_for_a_cut, options.cut_url)
            await session.call_tool("test_trigger_tool_change", {})
            with anyio.move_on_after(NOTIFICATION_SECONDS):
                while watch.changes < wanted:
                    await anyio.sleep(0.02)
        await anyio.sleep(SETTLE_SECONDS)  # a change delivered twice (a replay over a live stream) shows as a fourth
        return watch.changes

    actions: dict[str, Callable[[], Awaitable[Any]]] = {
        "tools": tools,
        "call": lambda: text(session.call_tool("test_simple_text", {})),
        "resource": lambda: text(session.read_resource("test://static-text")),
        "prompt": lambda: text(session.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})),
        "progress": progress,
        "reconnection": lambda: text(session.call_tool("test_reconnection", {})),
        "list_changed": list_changed,
    }
    for step in steps:
        if step in actions:
            try:
                with anyio.fail_after(STEP_SECONDS * (3 if step == "list_changed" else 1)):
                    report[step] = await actions[step]()
            except Exception as exc:  # the step's failure is its value
                report[step] = {"error": describe(exc)}


def ask_for_a_cut(url: str) -> None:
    """POST to the proxy's control URL; it answers once it has cut (or decided not to)."""
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=STEP_SECONDS) as answer:
        answer.read()


async def unauthorized(library: Library, options: argparse.Namespace, recorder: Recorder) -> str:
    """What the client says when its key is wrong: what it raised, and what it logged meanwhile (the library
    logs the HTTP error of a failed POST, and may only time out at the session level)."""
    logged = len(recorder.lines)
    try:
        with anyio.fail_after(STEP_SECONDS):
            async with library.open(options, WRONG_KEY, Watch()):
                pass
        said = "connected"
    except Exception as exc:
        said = describe(exc)
    during = recorder.lines[logged:]
    del recorder.lines[logged:]
    return " | ".join([said, *during])


async def session_report(library: Library, options: argparse.Namespace) -> dict[str, Any]:
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    steps = [step for step in options.steps.split(",") if step]
    report: dict[str, Any] = {
        "client": "python-mcp",
        "version": version("mcp"),
        "transport": options.transport,
        "mode": options.mode,
    }
    watch = Watch()
    try:
        with anyio.fail_after(STEP_SECONDS * (len(steps) + 3)):  # connecting has no timeout of its own
            async with library.open(options, options.key, watch) as (session, protocol):
                report["protocol"] = protocol
                await run_steps(session, options, steps, watch, report)
    except Exception as exc:  # the session failed: connecting, initializing or closing
        recorder.lines.append(f"raised: {describe(exc)}")
    if "unauthorized" in steps and options.transport != "stdio":  # stdio has no credentials to refuse
        report["unauthorized"] = await unauthorized(library, options, recorder)
    report["client_errors"] = recorder.summary()
    return report


def drive(library: Library, description: str) -> None:
    """Run the driver: the report of one session, as one JSON object on stdout."""
    options = arguments(library, description)
    print(json.dumps(anyio.run(session_report, library, options)), flush=True)
