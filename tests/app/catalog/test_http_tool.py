"""Tools and resources of kind ``http`` against a real upstream HTTP server on loopback that records what it got."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.catalog.http_tool import http_resource_reader, http_tool_handler
from app.catalog.model import HttpResourceEntry, HttpTemplateEntry, HttpToolEntry
from app.catalog.upstream import Upstream
from app.features.resources import ResourceNotFound, Resources, ResourceSpec, TemplateSpec
from app.features.tools import ToolResult, Tools, ToolSpec
from app.jsonrpc import InternalError, InvalidParams
from app.protocol.context import RequestContext
from tests.conftest import free_port

SECRET = "s3cr3t-T0ken"
CTX = RequestContext(request_id=1, method="tools/call")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
WEATHER = b'{"city": "Paris", "temp": 21.5}'
WEATHER_SCHEMA = {"type": "object", "properties": {"temp": {"type": "number"}}, "required": ["temp"]}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Api:
    """The upstream: answers by path, records every request it receives."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                owner.received.append(Received(self.command, self.path, headers, body))
                with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                    owner.route(self, self.path.partition("?")[0], headers)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def route(self, handler: BaseHTTPRequestHandler, path: str, headers: Mapping[str, str]) -> None:
        def send(status: int, body: bytes = b"", content_type: str | None = None, *, length: bool = True,
                 extra: Mapping[str, str] | None = None) -> None:  # fmt: skip
            handler.send_response(status)
            if content_type:
                handler.send_header("Content-Type", content_type)
            if length:
                handler.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)

        if path == "/echo":
            send(200, b'{"ok": true}', "application/json")
        elif path == "/weather":
            send(200, WEATHER, "application/json; charset=utf-8")
        elif path == "/list":
            send(200, b"[1, 2]", "application/json")
        elif path == "/html":
            send(200, b"<p>hello</p>", "text/html; charset=utf-8")
        elif path == "/png":
            send(200, PNG, "image/png")
        elif path == "/empty":
            send(204)
        elif path == "/fail":  # echoes the token, as some APIs do
            send(500, f"database down\n  retry later (token {headers.get('authorization')})".encode(), "text/plain")
        elif path == "/fail-long":
            send(502, b"x" * 1000, "text/plain")
        elif path == "/slow":
            self.release.wait(5)
            send(200, b'{"late": true}', "application/json")
        elif path == "/redirect":
            send(302, extra={"Location": "http://elsewhere.example/next"})
        elif path == "/big":
            send(200, b"a" * 2000, "text/plain")
        elif path == "/big-unsized":  # HTTP/1.0: the body ends when the connection closes
            send(200, b"a" * 2000, "text/plain", length=False)
        elif path.startswith("/items/"):
            send(200, json.dumps({"id": path.removeprefix("/items/")}).encode(), "application/json")
        else:
            send(404, b"no such thing", "text/plain")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[Api]:
    upstream = Api()
    yield upstream
    upstream.close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    return path


def entry(url: str, token: Path | None = None, **fields: Any) -> HttpToolEntry:
    """A tool whose calls carry the secret in the Authorization header (when ``token`` is given)."""
    secret = {"secrets": {"token": str(token)}, "headers": {"Authorization": "Bearer {{ secrets.token }}"}}
    fields = {**(secret if token else {}), **fields}
    return HttpToolEntry.model_validate({"kind": "http", "name": "t", "description": "T.", "url": url, **fields})


async def call_with(upstream: Upstream, tool: HttpToolEntry, arguments: Mapping[str, Any],
                    timeout: float = 5) -> ToolResult:  # fmt: skip
    spec = ToolSpec(name=tool.name, description=tool.description, input_schema={"type": "object"},
                    output_schema=tool.output_schema,
                    handler=http_tool_handler(tool, upstream, timeout_seconds=timeout))  # fmt: skip
    return (await Tools([spec], timeout_seconds=10).call({"name": tool.name, "arguments": dict(arguments)}, CTX)).result


def call(api: Api, tool: HttpToolEntry, arguments: Mapping[str, Any] | None = None, *,
         allowed: tuple[str, ...] | None = None, max_bytes: int = 10 * 1024 * 1024,
         timeout: float = 5) -> ToolResult:  # fmt: skip
    async def run() -> ToolResult:
        upstream = Upstream(allowed if allowed is not None else (api.host,), max_response_bytes=max_bytes)
        try:
            return await call_with(upstream, tool, arguments or {}, timeout)
        finally:
            await upstream.aclose()

    return asyncio.run(run())


def error_text(result: ToolResult) -> str:
    """The message of a tool error, which never holds the secret."""
    assert result["isError"] is True, result
    text: str = result["content"][0]["text"]
    assert SECRET not in text
    return text


def test_the_templated_url_headers_and_json_body_reach_the_upstream_rendered(api: Api, token: Path) -> None:
    tool = entry(f"{api.url}/echo?city={{{{ city | urlencode }}}}&units={{{{ arguments.units }}}}", token,
                 method="post", headers={"Authorization": "Bearer {{ secrets.token }}", "X-Units": "{{ units }}"},
                 body='{"city": {{ city | tojson }}, "days": {{ days }}}')  # fmt: skip
    result = call(api, tool, {"city": "São Paulo & co", "units": "metric", "days": 3})
    assert result == {"content": [{"type": "text", "text": '{"ok": true}'}], "isError": False}
    [got] = api.received
    assert (got.method, got.path) == ("POST", "/echo?city=S%C3%A3o%20Paulo%20%26%20co&units=metric")
    assert got.headers["authorization"] == f"Bearer {SECRET}"
    assert got.headers["x-units"] == "metric"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("erlmcp/")
    assert json.loads(got.body) == {"city": "São Paulo & co", "days": 3}


def test_a_body_that_is_not_json_is_sent_without_a_content_type(api: Api) -> None:
    call(api, entry(f"{api.url}/echo", method="PUT", body="city={{ city | urlencode }}"), {"city": "Nice"})
    [got] = api.received
    assert got.body == b"city=Nice"
    assert "content-type" not in got.headers


def test_a_content_type_the_entry_sets_is_kept(api: Api) -> None:
    call(api, entry(f"{api.url}/echo", method="POST", body="[1]", headers={"content-type": "application/x-ndjson"}))
    assert api.received[0].headers["content-type"] == "application/x-ndjson"


def test_an_argument_named_secrets_cannot_stand_in_for_the_secrets(api: Api, token: Path) -> None:
    call(api, entry(f"{api.url}/echo", token), {"secrets": {"token": "forged"}})
    assert api.received[0].headers["authorization"] == f"Bearer {SECRET}"


def test_a_rotated_secret_file_is_used_by_the_next_call(api: Api, token: Path) -> None:
    tool = entry(f"{api.url}/echo", token)

    async def two_calls() -> None:
        upstream = Upstream((api.host,))
        try:
            await call_with(upstream, tool, {})
            token.write_text("rotated-token\n")
            await call_with(upstream, tool, {})
        finally:
            await upstream.aclose()

    asyncio.run(two_calls())
    assert [got.headers["authorization"] for got in api.received] == [f"Bearer {SECRET}", "Bearer rotated-token"]


def test_a_missing_secret_file_is_a_tool_error_naming_the_path_and_no_request_is_made(api: Api, tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    text = error_text(call(api, entry(f"{api.url}/echo", missing)))
    assert text == f"secret 'token' cannot be read from {missing}: No such file or directory"
    assert api.received == []


def test_an_upstream_slower_than_the_timeout_is_a_tool_error(api: Api, token: Path) -> None:
    started = time.monotonic()
    text = error_text(call(api, entry(f"{api.url}/slow", token), timeout=0.3))
    assert text == "the upstream did not answer within 0.3 s"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("host", "shown"), [("evil.example", "evil.example:80"),
                                             ("127.0.0.1:{port}", "127.0.0.1:{port}")])  # fmt: skip
def test_a_templated_host_off_the_allow_list_is_refused_before_any_request(api: Api, token: Path, host: str,
                                                                           shown: str) -> None:  # fmt: skip
    tool = entry("http://{{ host }}/echo", token)
    text = error_text(call(api, tool, {"host": host.format(port=api.port)}, allowed=(f"localhost:{api.port}",)))
    assert text == f"host '{shown.format(port=api.port)}' is not in allowedHosts ['localhost:{api.port}']"
    assert api.received == []


def test_an_allowed_host_on_another_port_is_refused_before_any_request(api: Api, token: Path) -> None:
    text = error_text(call(api, entry(f"{api.url}/echo", token), allowed=(f"127.0.0.1:{api.port + 1}",)))
    assert text == f"host '127.0.0.1:{api.port}' is not in allowedHosts ['127.0.0.1:{api.port + 1}']"
    assert api.received == []


def test_a_url_that_is_not_http_is_refused(api: Api, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.write_text("file:///etc/passwd\n")
    text = error_text(call(api, entry("{{ secrets.base }}", secrets={"base": str(base)})))
    assert text == "url: the scheme must be http or https, not 'file'"


@pytest.mark.parametrize("url", ["{{ where }}", "{{ arguments.base }}/items", "ftp://x.example/", "//x.example/"])
def test_a_url_must_start_with_http_or_a_secret_base_url(url: str) -> None:
    with pytest.raises(ValueError, match="must start with http:// or https:// \\(or \\{\\{ secrets.NAME \\}\\}"):
        entry(url)


def test_an_unreachable_upstream_is_a_tool_error_naming_host_and_port(api: Api, token: Path) -> None:
    port = free_port()
    text = error_text(call(api, entry(f"http://127.0.0.1:{port}/echo", token), allowed=(f"127.0.0.1:{port}",)))
    assert text.startswith(f"cannot reach the upstream 127.0.0.1:{port}: ConnectError: ")


def test_an_upstream_500_is_a_tool_error_with_the_status_and_the_body_on_one_line(api: Api, token: Path) -> None:
    text = error_text(call(api, entry(f"{api.url}/fail", token)))
    assert (
        text
        == "the upstream answered 500 Internal Server Error: database down retry later (token Bearer [secrets.token])"
    )


def test_a_long_error_body_is_cut_to_200_characters(api: Api) -> None:
    text = error_text(call(api, entry(f"{api.url}/fail-long")))
    assert text == "the upstream answered 502 Bad Gateway: " + "x" * 200 + "…"


def test_a_json_object_with_an_output_schema_is_structured_content(api: Api, token: Path) -> None:
    result = call(api, entry(f"{api.url}/weather", token, outputSchema=WEATHER_SCHEMA))
    assert result == {"content": [{"type": "text", "text": WEATHER.decode()}], "isError": False,
                      "structuredContent": {"city": "Paris", "temp": 21.5}}  # fmt: skip


def test_json_that_does_not_match_the_output_schema_is_a_tool_error(api: Api) -> None:
    schema = {"type": "object", "required": ["humidity"]}
    text = error_text(call(api, entry(f"{api.url}/weather", outputSchema=schema)))
    assert text == "Tool 't' returned output that does not match its outputSchema"


def test_a_json_array_with_an_output_schema_is_a_tool_error(api: Api, token: Path) -> None:
    text = error_text(call(api, entry(f"{api.url}/list", token, outputSchema=WEATHER_SCHEMA)))
    assert text == "the upstream's JSON is not an object (it is an array), and the tool declares an outputSchema"


def test_a_non_json_answer_with_an_output_schema_is_a_tool_error(api: Api, token: Path) -> None:
    text = error_text(call(api, entry(f"{api.url}/html", token, outputSchema=WEATHER_SCHEMA)))
    assert text == "the upstream answered text/html, not JSON, and the tool declares an outputSchema"


def test_json_without_an_output_schema_is_text_as_received(api: Api) -> None:
    result = call(api, entry(f"{api.url}/weather"))
    assert result == {"content": [{"type": "text", "text": WEATHER.decode()}], "isError": False}


def test_text_without_an_output_schema_is_text(api: Api) -> None:
    assert call(api, entry(f"{api.url}/html"))["content"] == [{"type": "text", "text": "<p>hello</p>"}]


def test_an_image_answer_is_an_image_block(api: Api) -> None:
    result = call(api, entry(f"{api.url}/png"))
    assert result["content"] == [{"type": "image", "data": base64.b64encode(PNG).decode(), "mimeType": "image/png"}]


def test_an_empty_answer_says_so(api: Api) -> None:
    assert call(api, entry(f"{api.url}/empty"))["content"] == [
        {"type": "text", "text": "(empty response, 204 No Content)"}
    ]


def test_a_redirect_is_not_followed(api: Api, token: Path) -> None:
    text = error_text(call(api, entry(f"{api.url}/redirect", token)))
    assert text == "the upstream answered 302 Found, a redirect to host 'elsewhere.example'; redirects are not followed"
    assert [got.path for got in api.received] == ["/redirect"]


@pytest.mark.parametrize(("path", "message"), [
    ("/big", "the upstream 127.0.0.1:{port} answered 2000 bytes, more than the 1000 bytes limit; refused"),
    ("/big-unsized", "the upstream 127.0.0.1:{port} answered more than the 1000 bytes limit; refused"),
])  # fmt: skip
def test_an_answer_over_the_size_cap_is_refused(api: Api, token: Path, path: str, message: str) -> None:
    text = error_text(call(api, entry(f"{api.url}{path}", token), max_bytes=1000))
    assert text == message.format(port=api.port)


def test_a_sandbox_escape_in_a_template_is_refused_at_call_time(api: Api, token: Path) -> None:
    tool = entry(f"{api.url}/echo?x={{{{ ''.__class__.__mro__ }}}}", token)
    text = error_text(call(api, tool))
    assert text == ("url: the template does something the sandbox refuses: "
                    "access to attribute '__class__' of 'str' object is unsafe.")  # fmt: skip
    assert api.received == []


def test_an_undefined_variable_is_a_tool_error_naming_the_field(api: Api, token: Path) -> None:
    tool = entry(f"{api.url}/echo", token, headers={"Authorization": "Bearer {{ secrets.tokn }}"})
    text = error_text(call(api, tool))
    assert text == "headers.Authorization: the template uses an undefined value: 'dict object' has no attribute 'tokn'"
    assert api.received == []


def test_a_header_that_renders_a_line_break_is_refused(api: Api, token: Path) -> None:
    tool = entry(f"{api.url}/echo", token, headers={"X-City": "{{ city }}"})
    text = error_text(call(api, tool, {"city": "Nice\r\nX-Injected: 1"}))
    assert text == "header 'X-City' renders to a value with a control character (a line break?)"
    assert api.received == []


def read(api: Api, reader_of: Any, uri: str, variables: Mapping[str, str] | None = None) -> Any:
    async def run() -> Any:
        upstream = Upstream((api.host,))
        try:
            return await reader_of(upstream)(uri, variables or {})
        finally:
            await upstream.aclose()

    return asyncio.run(run())


def resource(url: str, **fields: Any) -> HttpResourceEntry:
    return HttpResourceEntry.model_validate({"kind": "http", "uri": "weather://today", "name": "today", "url": url,
                                             **fields})  # fmt: skip


def test_a_json_resource_is_text_with_the_upstream_media_type(api: Api) -> None:
    contents = read(api, lambda up: http_resource_reader(resource(f"{api.url}/weather"), up), "weather://today")
    assert contents == [{"uri": "weather://today", "mimeType": "application/json", "text": WEATHER.decode()}]


def test_a_png_resource_is_a_base64_blob(api: Api) -> None:
    contents = read(api, lambda up: http_resource_reader(resource(f"{api.url}/png"), up), "weather://today")
    assert contents == [{"uri": "weather://today", "mimeType": "image/png", "blob": base64.b64encode(PNG).decode()}]


def test_the_entry_mime_type_wins_over_the_upstream_one(api: Api) -> None:
    entry_ = resource(f"{api.url}/html", mimeType="text/markdown")
    contents = read(api, lambda up: http_resource_reader(entry_, up), "weather://today")
    assert contents == [{"uri": "weather://today", "mimeType": "text/markdown", "text": "<p>hello</p>"}]


def test_an_upstream_404_is_resource_not_found(api: Api) -> None:
    with pytest.raises(ResourceNotFound, match="the upstream answered 404 Not Found"):
        read(api, lambda up: http_resource_reader(resource(f"{api.url}/nothing"), up), "weather://today")


def test_an_upstream_500_is_an_internal_error_without_the_secret(api: Api, token: Path) -> None:
    entry_ = resource(f"{api.url}/fail", secrets={"token": str(token)},
                      headers={"Authorization": "Bearer {{ secrets.token }}"})  # fmt: skip
    with pytest.raises(InternalError) as raised:
        read(api, lambda up: http_resource_reader(entry_, up), "weather://today")
    assert raised.value.message == (
        "resource 'weather://today' cannot be read: the upstream answered 500 Internal Server Error: "
        "database down retry later (token Bearer [secrets.token])"
    )
    assert raised.value.data == {"uri": "weather://today"}


def test_a_resource_on_a_host_off_the_allow_list_is_an_internal_error(api: Api) -> None:
    with pytest.raises(InternalError, match=r"host 'evil\.example:443' is not in allowedHosts \['127\.0\.0\.1:\d+'\]"):
        read(api, lambda up: http_resource_reader(resource("https://evil.example/x"), up), "weather://today")
    assert api.received == []


def test_template_variables_and_secrets_are_rendered_into_the_request(api: Api, token: Path) -> None:
    template = HttpTemplateEntry.model_validate({
        "kind": "http", "uriTemplate": "items://{id}", "name": "item",
        "url": f"{api.url}/items/{{{{ id | urlencode }}}}",
        "secrets": {"token": str(token)}, "headers": {"Authorization": "Bearer {{ secrets.token }}"},
    })  # fmt: skip

    async def run() -> Any:
        upstream = Upstream((api.host,))
        try:
            spec = TemplateSpec(uri_template=template.uri_template, name=template.name,
                                read=http_resource_reader(template, upstream))  # fmt: skip
            return await Resources([], [spec]).read({"uri": "items://a b"})
        finally:
            await upstream.aclose()

    assert asyncio.run(run()) == {"contents": [{"uri": "items://a b", "mimeType": "application/json",
                                                "text": '{"id": "a%20b"}'}]}  # fmt: skip
    [got] = api.received
    assert (got.path, got.headers["authorization"]) == ("/items/a%20b", f"Bearer {SECRET}")


def test_a_fixed_resource_is_served_through_resources_read(api: Api) -> None:
    async def run() -> Any:
        upstream = Upstream((api.host,))
        try:
            spec = ResourceSpec(uri="weather://today", name="today",
                                read=http_resource_reader(resource(f"{api.url}/weather"), upstream))  # fmt: skip
            return await Resources([spec], []).read({"uri": "weather://today"})
        finally:
            await upstream.aclose()

    assert asyncio.run(run())["contents"][0]["text"] == WEATHER.decode()


def test_a_value_quoted_in_a_json_body_stays_inside_its_string(api: Api) -> None:
    call(api, entry(f"{api.url}/echo", method="POST", body='{"q": "{{ q }}", "n": {{ n }}}'),
         {"q": 'x", "admin": true, "y": "', "n": '1, "admin": true'})  # fmt: skip
    [got] = api.received
    assert json.loads(got.body) == {"q": 'x", "admin": true, "y": "', "n": '1, "admin": true'}
    assert got.headers["content-type"] == "application/json"


def test_a_json_body_that_does_not_render_to_json_is_refused_before_any_request(api: Api) -> None:
    text = error_text(call(api, entry(f"{api.url}/echo", method="POST", body='{"q": "{{ q | tojson }}"}'), {"q": "a"}))
    assert text.startswith("body: the template does not render to valid JSON")
    assert api.received == []


def test_a_form_body_declared_by_its_content_type_encodes_each_value(api: Api) -> None:
    tool = entry(f"{api.url}/echo", method="POST", body="city={{ city }}&days=2",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    call(api, tool, {"city": "Nice&admin=1"})
    assert api.received[0].body == b"city=Nice%26admin%3D1&days=2"


def test_a_dot_segment_in_the_url_is_refused_whoever_wrote_it(api: Api) -> None:
    text = error_text(call(api, entry(f"{api.url}/v1/../admin")))
    assert text == "url: the path '/v1/../admin' has a '.' or '..' segment; refused"
    assert api.received == []


@pytest.mark.parametrize("item", ["..", "."])
def test_a_resource_uri_whose_variable_would_leave_the_path_is_invalid_params(api: Api, token: Path, item: str) -> None:
    template = HttpTemplateEntry.model_validate({
        "kind": "http", "uriTemplate": "items://{id}", "name": "item", "url": f"{api.url}/items/{{{{ id }}}}",
        "secrets": {"token": str(token)}, "headers": {"Authorization": "Bearer {{ secrets.token }}"},
    })  # fmt: skip

    async def run() -> Any:
        upstream = Upstream((api.host,))
        try:
            spec = TemplateSpec(uri_template=template.uri_template, name=template.name,
                                read=http_resource_reader(template, upstream))  # fmt: skip
            return await Resources([], [spec]).read({"uri": f"items://{item}"})
        finally:
            await upstream.aclose()

    with pytest.raises(InvalidParams) as refused:
        asyncio.run(run())
    assert refused.value.message == (
        f"Invalid params: resource 'items://{item}' cannot be read: url: id is {item!r}: a value in the URL's path "
        "is one segment, never empty, '.' or '..'"
    )
    assert refused.value.data == {"uri": f"items://{item}"}
    assert api.received == []
