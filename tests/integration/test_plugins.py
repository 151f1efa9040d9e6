"""Plugins found through real entry points (an installed distribution's metadata on sys.path), served by a real
server when the catalogue names them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, start_server
from tests.stateless import post

pytestmark = pytest.mark.slow

PLUGIN = '''
"""A partner's plugin: a tool (in a thread and in a worker process), a resource and a prompt."""

def shout(text: str) -> str:
    """Upper-cases the text."""
    return text.upper()


def pid() -> int:
    """The process the call ran in."""
    import os
    return os.getpid()


def register(registry):
    registry.tool(shout)
    registry.tool(pid, name="worker_pid", isolation="process")
    registry.resource("demo://motd", "motd", text="Have a nice day.")
    registry.prompt("haiku", "Write a haiku about {{ subject }}.", arguments=[{"name": "subject", "required": True}])
'''


def install(site: Path) -> None:
    """What ``pip install`` leaves behind: the package, and dist-info metadata naming its entry point."""
    (site / "erlmcp_demo_plugin").mkdir(parents=True)
    (site / "erlmcp_demo_plugin" / "__init__.py").write_text(PLUGIN)
    info = site / "erlmcp_demo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: erlmcp-demo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[erlmcp.plugins]\ndemo = erlmcp_demo_plugin:register\n")


def rpc(url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = post(url, method, params).json()
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    return result


def test_a_plugin_named_in_the_catalogue_serves_its_tools_resources_and_prompts(tmp_path: Path) -> None:
    install(tmp_path / "site")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("plugins: [demo]\ntools: [{name: echo, description: Echoes., builtin: echo}]\n")
    server = start_server(tmp_path, ["--no-auth", "--catalog", str(catalog)],
                          env={"PYTHONPATH": str(tmp_path / "site")})  # fmt: skip
    url = f"{server.url}/mcp"
    try:
        names = [tool["name"] for tool in rpc(url, "tools/list", {})["tools"]]
        shouted = rpc(url, "tools/call", {"name": "shout", "arguments": {"text": "hi"}})
        in_worker = rpc(url, "tools/call", {"name": "worker_pid", "arguments": {}})
        motd = rpc(url, "resources/read", {"uri": "demo://motd"})
        haiku = rpc(url, "prompts/get", {"name": "haiku", "arguments": {"subject": "rain"}})
    finally:
        server.stop()
    assert names == ["echo", "shout", "worker_pid"]
    assert shouted["content"] == [{"type": "text", "text": "HI"}]
    assert int(in_worker["content"][0]["text"]) != server.process.pid
    assert motd["contents"][0]["text"] == "Have a nice day."
    assert haiku["messages"][0]["content"]["text"] == "Write a haiku about rain."


def test_a_plugin_that_is_not_installed_stops_the_start_with_its_name(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("plugins: [missing]\n")
    command = [sys.executable, "-m", "app", "--no-auth", "--port", "0", "--metrics-port", "0"]
    command += ["--catalog", str(catalog)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "plugin 'missing' is not installed (entry points 'erlmcp.plugins'" in done.stderr
