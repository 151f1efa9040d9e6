"""A session's record holds what the client sent at initialize (clientInfo, capabilities), in memory or in Redis
for as long as the session lives: each is bounded, so the session quota bounds what one key can store. Before,
each could be as large as a request (4 MiB): 100 sessions of one key put 800 MiB into the chart's 192 MB Redis,
which then evicted everyone's sessions. Written once, over every door that opens sessions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.doors import HANDSHAKE_DOORS, Peer, connect, run
from tests.security.conftest import ChartServer, serve_as_chart

pytestmark = pytest.mark.slow

MOST = 32 * 1024  # the bound the server documents for each field


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartServer]:
    running = serve_as_chart(tmp_path_factory, "session-records")
    yield running
    running.stop()


def initialize(client_info: dict[str, Any], capabilities: dict[str, Any]) -> dict[str, Any]:
    params = {"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": client_info}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


def ask(server: ChartServer, door: str, message: dict[str, Any]) -> Any:
    async def scenario() -> Any:
        peer: Peer
        async with connect(door, server, server.key("limited")) as peer:
            return await peer.ask(message)

    return run(scenario)


@pytest.mark.parametrize("door", HANDSHAKE_DOORS)
@pytest.mark.parametrize("field", ["clientInfo", "capabilities"])
def test_an_oversized_client_field_is_refused_at_initialize_naming_it(
    server: ChartServer, door: str, field: str
) -> None:
    huge = {"name": "c", "version": "1", "padding": "x" * (MOST + 1)}
    fields = {"clientInfo": {"name": "c", "version": "1"}, "capabilities": {}} | {field: huge}
    answer = ask(server, door, initialize(fields["clientInfo"], fields["capabilities"]))
    assert answer.get("error", {}).get("code") == -32602, f"{door}: {str(answer)[:300]}"
    assert field in answer["error"]["message"]
    assert str(MOST) in answer["error"]["message"]


@pytest.mark.parametrize("door", HANDSHAKE_DOORS)
def test_a_client_with_a_data_uri_icon_and_rich_capabilities_is_served(server: ChartServer, door: str) -> None:
    icon = {"src": "data:image/png;base64," + "A" * 12_000, "mimeType": "image/png", "sizes": ["48x48"]}
    client_info = {"name": "rich-client", "title": "Rich Client", "version": "9.9.9", "icons": [icon]}
    capabilities = {"roots": {"listChanged": True}, "sampling": {"tools": {}}, "elicitation": {"form": {}, "url": {}}}
    answer = ask(server, door, initialize(client_info, capabilities))
    assert answer["result"]["protocolVersion"] == "2025-11-25", f"{door}: {str(answer)[:300]}"
