"""Hot reload of the catalogue against a real server: a changed file is served without a restart and listening
clients hear list_changed; an invalid one is refused with the reason logged and the old one kept; an invalid
catalogue at start is exit code 2 naming the entry and the field."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ROOT, RunningServer, start_server
from tests.sse import response_message

pytestmark = pytest.mark.slow

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
           "MCP-Protocol-Version": "2025-11-25"}  # fmt: skip
FIRST = """
tools:
  - {name: echo, description: Echoes., builtin: echo}
"""
SECOND = """
tools:
  - {name: echo, description: Echoes., builtin: echo}
  - {name: add, description: Adds., builtin: add}
prompts:
  - name: hello
    messages: [{text: "Hello {{ who }}"}]
    arguments: [{name: who, required: true}]
"""


def replace(path: Path, text: str) -> None:
    """Swap the file in atomically, as kubelet swaps a mounted ConfigMap."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


class Client:
    """A handshake-era session over raw HTTP, with its GET stream read in a thread."""

    def __init__(self, server: RunningServer) -> None:
        self.url = f"{server.url}/mcp"
        self.http = httpx.Client(timeout=10)
        hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}
        response = self.http.post(self.url, headers=HEADERS, content=orjson.dumps(body))
        self.session = response.headers["mcp-session-id"]
        self.headers = {**HEADERS, "Mcp-Session-Id": self.session}
        self.http.post(
            self.url, headers=self.headers, content=b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
        )
        self.notifications: queue.Queue[dict[str, Any]] = queue.Queue()
        self._listening = threading.Event()
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()
        assert self._listening.wait(10)

    def _listen(self) -> None:
        with httpx.Client(timeout=None) as http, http.stream("GET", self.url, headers=self.headers) as stream:
            self._listening.set()
            try:
                for line in stream.iter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        self.notifications.put(orjson.loads(line[5:]))
            except httpx.HTTPError:
                pass  # the server stopped

    def close(self) -> None:
        """After the server stopped: the stream has ended, so both clients close."""
        self._listener.join(10)
        self.http.close()

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params or {}}
        response = self.http.post(self.url, headers=self.headers, content=orjson.dumps(body))
        return response_message(response.headers["content-type"], response.text)

    def heard(self, method: str, seconds: float = 15) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if self.notifications.get(timeout=0.2).get("method") == method:
                    return True
            except queue.Empty:
                pass
        return False


def test_a_changed_catalogue_is_served_and_announced_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(FIRST)
    server = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog), "--catalog-reload-seconds", "0.2"])
    client = None
    try:
        client = Client(server)
        assert [t["name"] for t in client.call("tools/list")["result"]["tools"]] == ["echo"]

        replace(catalog, SECOND)
        assert client.heard("notifications/tools/list_changed")
        assert client.heard("notifications/prompts/list_changed")
        assert [t["name"] for t in client.call("tools/list")["result"]["tools"]] == ["echo", "add"]
        added = client.call("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}})["result"]
        assert added["structuredContent"] == {"result": 5}

        replace(catalog, SECOND.replace("builtin: add", "builtin: nope"))
        deadline = time.monotonic() + 15
        while "catalogue changed but cannot be used" not in server.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log.read_text()
        assert "catalogue changed but cannot be used" in log
        assert "tools[1] 'add': builtin: Input should be" in log
        assert [t["name"] for t in client.call("tools/list")["result"]["tools"]] == ["echo", "add"]
    finally:
        server.stop()
        if client is not None:
            client.close()


@pytest.mark.parametrize(("catalog", "named"), [
    ("tools: [{name: w, description: d, kind: http, url: 'https://evil.example/'}]",
     "tools[0] 'w': url: host 'evil.example' is not in allowedHosts []"),
    ("tools: [{name: p, description: d, kind: python, function: 'no_such_module:f'}]",
     "tools[0] 'p': function: cannot import module 'no_such_module'"),
    ("resources: [{kind: file, uri: 'a://b', name: notes, path: /no/such/file}]",
     "resources[0] 'notes': path: '/no/such/file' is not a file"),
    ("prompts: [{name: p, messages: []}]", "prompts[0] 'p': messages: List should have at least 1 item"),
])  # fmt: skip
def test_an_invalid_catalogue_at_start_is_exit_2_naming_the_entry_and_field(tmp_path: Path, catalog: str,
                                                                            named: str) -> None:  # fmt: skip
    path = tmp_path / "catalog.yaml"
    path.write_text(catalog)
    done = subprocess.run([sys.executable, "-m", "app", "--no-auth", "--port", "0", "--metrics-port", "0",
                           "--catalog", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert str(path) in done.stderr
    assert named in done.stderr
