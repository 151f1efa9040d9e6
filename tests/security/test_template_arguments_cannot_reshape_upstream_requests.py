"""A caller's values cannot change the shape of the requests ``http`` entries send upstream (red-team finding 6).

The operator writes where a catalogue tool or resource goes (``url``) and what it sends (``body``), and gives it a
bearer token. Whatever the caller puts in the arguments (or in a resource URI's variables):

- a value in the URL's path is one path segment: ``/``, ``?`` and ``#`` are percent-encoded, and a value that is
  ``.``, ``..`` or empty is refused before any request, so ``../../admin/delete`` never reaches ``/admin``;
- a value in the query is one query value: it cannot add a parameter;
- a value in the host is a host name: it cannot add a path (``127.0.0.1:PORT/admin?``);
- a value in a JSON body is a JSON value: it cannot add a field;
- the operator's ``Authorization`` header goes only to URLs of the template's shape.

Catalogues written correctly (``{{ city | urlencode }}`` in a query, ``{{ q | tojson }}`` in a body) send what
they always did. A real server as the chart ships it, against a real upstream HTTP server on loopback that records
every request it gets.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.security.conftest import ChartServer, serve_as_chart
from tests.stateless import post

pytestmark = pytest.mark.slow

TOKEN = "operator-token-0123456789"
TIMEOUT = 15.0  # liveness bound of every request
INJECTED = 'x", "admin": true, "y": "'


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # as sent, percent-encoding kept
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class Upstream:
    """The operator's API: answers every request with a small JSON document and records it."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = urlsplit(self.path)
                headers = {name.lower(): value for name, value in self.headers.items()}
                owner.received.append(Received(self.command, target.path, parse_qs(target.query), headers, body))
                reply = json.dumps({"path": target.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def catalog(upstream: Upstream, token: Path) -> dict[str, Any]:
    base = f"http://{upstream.host}"
    auth = {"headers": {"Authorization": "Bearer {{ secrets.token }}"}, "secrets": {"token": str(token)}}
    text = {"type": "object", "properties": {"city": {"type": "string"}, "units": {"type": "string"}}}
    return {
        "allowedHosts": [upstream.host],
        "tools": [
            {"name": "forecast", "kind": "http", "description": "The forecast (the way the review wrote it).",
             "url": f"{base}/v1/{{{{ city | urlencode }}}}", "inputSchema": text, **auth},
            {"name": "today", "kind": "http", "description": "Today's weather, in units.",
             "url": f"{base}/v1/{{{{ city }}}}/today?units={{{{ units }}}}", "inputSchema": text, **auth},
            {"name": "lookup", "kind": "http", "description": "A city, as a query value (the chart's example).",
             "url": f"{base}/v1/forecast?city={{{{ city | urlencode }}}}", "inputSchema": text, **auth},
            {"name": "status", "kind": "http", "description": "The status of one of the operator's hosts.",
             "url": "http://{{ host }}/v1/status", **auth},
            {"name": "search", "kind": "http", "method": "POST", "description": "A search.",
             "url": f"{base}/v1/search", "body": '{"q": "{{ q }}", "limit": {{ limit }}}', **auth},
            {"name": "search_tojson", "kind": "http", "method": "POST", "description": "A search, written with tojson.",
             "url": f"{base}/v1/search", "body": '{"q": {{ q | tojson }}, "limit": 10}', **auth},
        ],
        "resourceTemplates": [
            {"kind": "http", "uriTemplate": "weather://city/{city}", "name": "city", "url": f"{base}/v1/{{{{ city }}}}",
             **auth},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    api = Upstream()
    yield api
    api.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[ChartServer]:
    root = tmp_path_factory.mktemp("templates-catalog")
    token = root / "token"
    token.write_text(TOKEN + "\n")
    path = root / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog(upstream, token)))
    running = serve_as_chart(tmp_path_factory, "templates", args=["--catalog", str(path)])
    yield running
    running.stop()


@pytest.fixture
def received(upstream: Upstream) -> list[Received]:
    """The requests the upstream gets during one test."""
    upstream.received.clear()
    return upstream.received


def call(server: ChartServer, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    answered = post(server.mcp, "tools/call", {"name": tool, "arguments": arguments}, key=server.key("admin"),
                    timeout=TIMEOUT)  # fmt: skip
    assert answered.status_code == 200, answered.text
    result: dict[str, Any] = answered.json()["result"]
    return result


def read(server: ChartServer, uri: str) -> dict[str, Any]:
    answered = post(server.mcp, "resources/read", {"uri": uri}, key=server.key("admin"), timeout=TIMEOUT)
    body: dict[str, Any] = answered.json()
    return body


ONE_SEGMENT = re.compile(r"^/v1/[^/]+$")  # the shape of /v1/{{ city }}


def assert_token_only_in_shape(received: list[Received], shape: re.Pattern[str]) -> None:
    """Every request that carried the operator's token went to a path of the template's shape."""
    for got in received:
        if got.headers.get("authorization") == f"Bearer {TOKEN}":
            assert shape.fullmatch(got.path), f"the token was sent to {got.path!r}"


@pytest.mark.parametrize(
    "city", ["../../admin/delete", "..", ".", "", "../..", "%2e%2e", "%2e%2e%2fadmin", "x/../../admin", "a?b#c"]
)
def test_a_city_in_the_path_stays_one_segment_of_it(server: ChartServer, received: list[Received], city: str) -> None:
    result = call(server, "forecast", {"city": city})
    assert_token_only_in_shape(received, ONE_SEGMENT)
    if result["isError"]:  # refused before any request, saying why
        assert received == [], received
        assert "url" in result["content"][0]["text"], result
    else:
        [got] = received
        assert ONE_SEGMENT.fullmatch(got.path), got.path
        assert json.loads(result["content"][0]["text"]) == {"path": got.path}


@pytest.mark.parametrize("city", ["..", ".", ""])
def test_a_city_that_would_remove_or_empty_a_segment_is_refused_naming_it(
    server: ChartServer, received: list[Received], city: str
) -> None:
    result = call(server, "today", {"city": city, "units": "metric"})
    assert result["isError"] is True, result
    assert result["content"][0]["text"].startswith("url: "), result
    assert "city" in result["content"][0]["text"], result
    assert received == []


def test_a_value_in_the_query_is_one_query_value(server: ChartServer, received: list[Received]) -> None:
    result = call(server, "today", {"city": "Paris", "units": "metric&admin=true#x"})
    assert result["isError"] is False, result
    [got] = received
    assert got.path == "/v1/Paris/today"
    assert got.query == {"units": ["metric&admin=true#x"]}
    assert got.headers["authorization"] == f"Bearer {TOKEN}"


def test_a_host_value_cannot_add_a_path(server: ChartServer, upstream: Upstream, received: list[Received]) -> None:
    result = call(server, "status", {"host": f"{upstream.host}/admin/delete?x="})
    assert result["isError"] is True, result
    assert received == []
    served = call(server, "status", {"host": upstream.host})  # a host name is what the value is for
    assert served["isError"] is False, served
    assert [got.path for got in received] == ["/v1/status"]


def test_a_value_in_a_json_body_cannot_add_a_field(server: ChartServer, received: list[Received]) -> None:
    result = call(server, "search", {"q": INJECTED, "limit": 5})
    assert result["isError"] is False, result
    [got] = received
    assert json.loads(got.body) == {"q": INJECTED, "limit": 5}
    assert got.headers["content-type"] == "application/json"


def test_a_number_in_a_json_body_cannot_add_a_field(server: ChartServer, received: list[Received]) -> None:
    result = call(server, "search", {"q": "rain", "limit": '5, "admin": true'})
    if result["isError"]:
        assert received == []
    else:
        [got] = received
        assert set(json.loads(got.body)) == {"q", "limit"}


def test_correctly_written_templates_send_what_they_always_did(server: ChartServer, received: list[Received]) -> None:
    assert call(server, "forecast", {"city": "São Paulo"})["isError"] is False
    assert call(server, "lookup", {"city": "São Paulo & co/x"})["isError"] is False
    assert call(server, "search_tojson", {"q": INJECTED})["isError"] is False
    forecast, lookup, search = received
    assert forecast.path == "/v1/S%C3%A3o%20Paulo"
    assert (lookup.path, lookup.query) == ("/v1/forecast", {"city": ["São Paulo & co/x"]})
    assert json.loads(search.body) == {"q": INJECTED, "limit": 10}
    assert all(got.headers["authorization"] == f"Bearer {TOKEN}" for got in received)


@pytest.mark.parametrize("city", ["..", "."])
def test_a_resource_uri_cannot_lead_its_request_out_of_the_template(
    server: ChartServer, received: list[Received], city: str
) -> None:
    answered = read(server, f"weather://city/{city}")
    assert received == [], received
    assert answered["error"]["code"] == -32602, answered
    assert "city" in answered["error"]["message"], answered


def test_a_resource_uri_with_an_encoded_traversal_stays_one_segment(
    server: ChartServer, received: list[Received]
) -> None:
    answered = read(server, "weather://city/%2e%2e%2fadmin")
    assert_token_only_in_shape(received, ONE_SEGMENT)
    assert "result" in answered or received == [], answered


def test_a_resource_uri_with_a_plain_city_is_read(server: ChartServer, received: list[Received]) -> None:
    answered = read(server, "weather://city/Paris")
    assert json.loads(answered["result"]["contents"][0]["text"]) == {"path": "/v1/Paris"}
    assert [got.path for got in received] == ["/v1/Paris"]
