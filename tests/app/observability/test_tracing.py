"""Traces: when the SDK is on, one server span per JSON-RPC request in the shape of the MCP semantic conventions,
under the caller's trace context (``_meta`` first, then the HTTP headers), and every span reaches a real OTLP
receiver, the last ones when the server stops."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.testclient import TestClient

from app import __version__
from app.jsonrpc import Message
from app.observability import tracing
from app.observability.metrics import Metrics
from app.settings import Settings
from app.wiring import create_app
from tests.conftest import ROOT, RunningServer, start_server

HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
STATELESS = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": STATELESS, "io.modelcontextprotocol/clientCapabilities": {}}
# Two callers' trace contexts: one in the HTTP headers, one in _meta.
HEADER_TRACE, HEADER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
META_TRACE, META_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
HEADER_PARENT = f"00-{HEADER_TRACE}-{HEADER_SPAN}-01"
META_PARENT = f"00-{META_TRACE}-{META_SPAN}-01"


# -- a real OTLP/HTTP endpoint -----------------------------------------------------------------------------------


class OtlpReceiver:
    """An OTLP/HTTP receiver on loopback: POST /v1/traces (protobuf) is decoded and kept. GET answers a small JSON
    document, so that the same server can be the upstream of an http tool."""

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                export = ExportTraceServiceRequest()
                export.ParseFromString(body)
                with receiver._lock:
                    receiver.exports.append(export)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self) -> None:
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """Every span received, with the attributes of its resource."""
        with self._lock:
            exports = list(self.exports)
        return [(attributes(resource_spans.resource.attributes), span)
                for export in exports for resource_spans in export.resource_spans
                for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]  # fmt: skip

    def named(self, name: str) -> list[Span]:
        return [span for _, span in self.spans() if span.name == name]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict of plain values."""
    found: dict[str, Any] = {}
    for pair in pairs:
        assert isinstance(pair, KeyValue)
        kind = pair.value.WhichOneof("value")
        found[pair.key] = getattr(pair.value, kind) if kind else None
    return found


def wait_for(found: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll until ``found`` holds (the exporter sends in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found():
            return True
        time.sleep(0.05)
    return found()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


def otlp_env(receiver: OtlpReceiver, delay_ms: int = 100) -> dict[str, str]:
    """What turns tracing on, whatever the environment the tests run in says."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false", "OTEL_SERVICE_NAME": ""}  # fmt: skip


def post(server: RunningServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers}
    return httpx.post(f"{server.url}/mcp", content=orjson.dumps(body), headers=sent, timeout=10)


# -- configuration -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "otlp,console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "console"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "false"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, False),  # an exporter with nowhere to send
    ],
)
def test_tracing_is_on_only_with_the_otlp_exporter_and_an_endpoint(environ: dict[str, str], on: bool) -> None:
    provider = tracing.tracer_provider(environ, service_version="1.2.3")
    assert (provider is not None) == on
    if provider is not None:
        provider.shutdown()


@pytest.mark.parametrize(
    ("environ", "name"),
    [
        ({}, "erlmcp"),
        ({"OTEL_SERVICE_NAME": "mcp-prod"}, "mcp-prod"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=mcp%20eu"}, "mcp eu"),
        ({"OTEL_SERVICE_NAME": "mcp-prod", "OTEL_RESOURCE_ATTRIBUTES": "service.name=other"}, "mcp-prod"),
    ],
)
def test_the_resource_names_the_service_and_its_version(environ: dict[str, str], name: str) -> None:
    provider = tracing.tracer_provider({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", **environ},
                                       service_version="1.2.3")  # fmt: skip
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == name
        assert provider.resource.attributes["service.version"] == "1.2.3"
    finally:
        provider.shutdown()


def test_without_an_endpoint_nothing_is_installed_and_requests_take_the_quiet_path() -> None:
    stop = tracing.configure_tracing({"OTEL_SERVICE_NAME": "x"}, service_version="1.2.3")
    try:
        assert tracing.quiet(Message(method="ping", id=1, params={}))
        # A trace context in _meta is still followed, so that the request's log lines name it.
        assert not tracing.quiet(Message(method="ping", id=1, params={"_meta": {"traceparent": META_PARENT}}))
    finally:
        stop()  # harmless: there is nothing to flush


# -- spans in process (the real app, an SDK provider with an in-memory exporter) -------------------------------


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    """Spans of the app recorded in memory, for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    yield exporter
    tracing.use_tracer_provider(None)
    provider.shutdown()


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings(no_auth=True), metrics=Metrics("test"))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [span for span in exporter.get_finished_spans() if span.name == name]
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def ids(context: Any) -> tuple[str, str]:
    """A span context's trace id and span id, in hex."""
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_a_websocket_message_with_meta_traceparent_gets_a_server_span_under_it(
    client: TestClient, recorded: InMemorySpanExporter
) -> None:
    with client.websocket_connect("ws://127.0.0.1/ws", subprotocols=["mcp"]) as ws:
        ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO})
        ws.receive_json()
        call = {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"traceparent": META_PARENT}}
        ws.send_json({"jsonrpc": "2.0", "id": "call-2", "method": "tools/call", "params": call})
        assert ws.receive_json()["result"]["content"][0]["text"] == "hi"

    span = only(recorded, "tools/call echo")
    assert span.kind is SpanKind.SERVER
    assert span.parent is not None
    assert span.parent.is_remote
    assert ids(span.parent) == (META_TRACE, META_SPAN)
    found = attrs(span)
    assert found.pop("mcp.session.id")
    assert found.pop("client.address") == "testclient"
    assert isinstance(found.pop("client.port"), int)
    assert found == {
        "mcp.method.name": "tools/call",
        "jsonrpc.request.id": "call-2",
        "mcp.protocol.version": "2025-11-25",
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "echo",
        "network.transport": "tcp",
        "network.protocol.name": "websocket",
    }
    assert span.status.status_code is StatusCode.UNSET
    initialize = only(recorded, "initialize")
    assert initialize.parent is None  # no _meta, and a WebSocket's upgrade headers are not a message's parent
    assert attrs(initialize)["mcp.protocol.version"] == "2025-11-25"


def test_the_http_traceparent_is_the_parent_and_a_meta_traceparent_wins_with_a_link_to_it(
    client: TestClient, recorded: InMemorySpanExporter
) -> None:
    params = {"name": "echo", "arguments": {"text": "hi"}, "_meta": {**META, "traceparent": META_PARENT}}
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    headers = {"Accept": "application/json", "MCP-Protocol-Version": STATELESS, "Mcp-Method": "tools/call",
               "Mcp-Name": "echo", "traceparent": HEADER_PARENT}  # fmt: skip
    answered = client.post("/mcp", json=body, headers=headers)
    assert answered.status_code == 200
    opened = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO},
                         headers={"Accept": "application/json", "traceparent": HEADER_PARENT})  # fmt: skip
    assert opened.status_code == 200

    stateless = only(recorded, "tools/call echo")
    assert ids(stateless.parent) == (META_TRACE, META_SPAN)
    assert [ids(link.context) for link in stateless.links] == [(HEADER_TRACE, HEADER_SPAN)]
    found = attrs(stateless)
    assert (found["mcp.protocol.version"], found["network.protocol.name"], found["network.protocol.version"]) == (
        STATELESS, "http", "1.1")  # fmt: skip
    assert "mcp.session.id" not in found  # 2026-07-28 has no sessions
    initialize = only(recorded, "initialize")
    assert ids(initialize.parent) == (HEADER_TRACE, HEADER_SPAN)
    assert not initialize.links
    # The response names the trace the request was answered in, for the caller to find its log lines.
    assert answered.headers["x-request-id"] == META_TRACE
    assert opened.headers["x-request-id"] == HEADER_TRACE


def test_errors_set_status_error_with_the_code_and_unknown_names_stay_out_of_the_trace(
    client: TestClient, recorded: InMemorySpanExporter
) -> None:
    accept = {"Accept": "application/json"}
    opened = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO},
                         headers=accept)  # fmt: skip
    session = {**accept, "Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    for number, (method, params) in enumerate([
        ("tools/call", {"name": "no-such-tool-s3cr3t", "arguments": {}}),
        ("tools/call", {"name": "divide", "arguments": {"a": 1, "b": 0}}),
        ("no/such-method", {}),
        ("resources/read", {"uri": "erlmcp://help"}),
    ], start=2):  # fmt: skip
        client.post("/mcp", json={"jsonrpc": "2.0", "id": number, "method": method, "params": params}, headers=session)

    spans = {span.name: span for span in recorded.get_finished_spans()}
    assert set(spans) == {"initialize", "tools/call", "tools/call divide", "(unknown)", "resources/read"}
    unknown_tool = spans["tools/call"]
    assert unknown_tool.status.status_code is StatusCode.ERROR
    assert unknown_tool.status.description == "Unknown tool: 'no-such-tool-s3cr3t'"
    assert (attrs(unknown_tool)["error.type"], attrs(unknown_tool)["rpc.response.status_code"]) == ("-32602", "-32602")
    assert "gen_ai.tool.name" not in attrs(unknown_tool)  # a name the catalogue does not offer
    tool_error = spans["tools/call divide"]
    assert tool_error.status.status_code is StatusCode.ERROR
    assert attrs(tool_error)["error.type"] == "tool_error"
    assert "rpc.response.status_code" not in attrs(tool_error)
    unknown_method = attrs(spans["(unknown)"])
    assert (unknown_method["mcp.method.name"], unknown_method["error.type"]) == ("no/such-method", "-32601")
    read = spans["resources/read"]
    assert read.status.status_code is StatusCode.UNSET
    assert attrs(read)["mcp.resource.uri"] == "erlmcp://help"
    assert spans["initialize"].status.status_code is StatusCode.UNSET


# -- a real server exporting to a real OTLP receiver --------------------------------------------------------------


@pytest.mark.slow
def test_spans_of_a_real_server_reach_an_otlp_receiver_under_the_callers_trace(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    server = start_server(tmp_path, ["--no-auth"], env=otlp_env(receiver))
    try:
        opened = post(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO},
                      traceparent=HEADER_PARENT)  # fmt: skip
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        echoed = post(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                               "params": {"name": "echo", "arguments": {"text": "hi"}}},
                      traceparent=HEADER_PARENT, **session)  # fmt: skip
        refused = post(server, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                "params": {"name": "no-such-tool", "arguments": {}}}, **session)  # fmt: skip
        stateless = post(server, {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                  "params": {"name": "add", "arguments": {"a": 1, "b": 2},
                                             "_meta": {**META, "traceparent": META_PARENT}}},
                         traceparent=HEADER_PARENT, **{"MCP-Protocol-Version": STATELESS, "Mcp-Method": "tools/call",
                                                       "Mcp-Name": "add"})  # fmt: skip
        assert [opened.status_code, echoed.status_code, refused.status_code, stateless.status_code] == [200] * 4
        assert wait_for(lambda: len(receiver.spans()) >= 4)
    finally:
        assert server.stop() == 0

    resources = {(resource["service.name"], resource["service.version"]) for resource, _ in receiver.spans()}
    assert resources == {("erlmcp", __version__)}
    [initialize] = receiver.named("initialize")
    [echo] = receiver.named("tools/call echo")
    [unknown] = receiver.named("tools/call")
    [add] = receiver.named("tools/call add")
    for span in (initialize, echo):
        assert span.kind == Span.SPAN_KIND_SERVER
        assert (span.trace_id.hex(), span.parent_span_id.hex()) == (HEADER_TRACE, HEADER_SPAN)
    echo_attributes = attributes(echo.attributes)
    assert echo_attributes["mcp.method.name"] == "tools/call"
    assert echo_attributes["gen_ai.tool.name"] == "echo"
    assert echo_attributes["gen_ai.operation.name"] == "execute_tool"
    assert echo_attributes["jsonrpc.request.id"] == "2"
    assert echo_attributes["mcp.session.id"] == session["Mcp-Session-Id"]
    assert echo_attributes["mcp.protocol.version"] == "2025-11-25"
    assert (echo_attributes["network.transport"], echo_attributes["network.protocol.name"]) == ("tcp", "http")
    assert echo.status.code == Status.STATUS_CODE_UNSET
    assert unknown.status.code == Status.STATUS_CODE_ERROR
    assert attributes(unknown.attributes)["error.type"] == "-32602"
    assert unknown.parent_span_id == b""  # no traceparent: a trace of its own
    assert (add.trace_id.hex(), add.parent_span_id.hex()) == (META_TRACE, META_SPAN)  # _meta wins over the header
    assert [(link.trace_id.hex(), link.span_id.hex()) for link in add.links] == [(HEADER_TRACE, HEADER_SPAN)]


@pytest.mark.slow
def test_spans_still_in_the_batch_are_sent_when_the_server_stops(tmp_path: Path, receiver: OtlpReceiver) -> None:
    server = start_server(tmp_path, ["--no-auth"], env=otlp_env(receiver, delay_ms=600_000))  # no timed export
    try:
        opened = post(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO})
        assert opened.status_code == 200
        assert receiver.spans() == []  # still in the batch
    finally:
        assert server.stop() == 0
    assert [span.name for _, span in receiver.spans()] == ["initialize"]


@pytest.mark.slow
def test_a_stdio_server_traces_its_messages_as_coming_on_a_pipe_and_flushes_at_eof(receiver: OtlpReceiver) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ERLMCP_", "OTEL_"))}
    command = [sys.executable, "-m", "app", "--transport", "stdio", "--log-format", "json"]
    with subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          env={**env, **otlp_env(receiver, delay_ms=600_000)}) as process:  # fmt: skip
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            for message in ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO},
                            {"jsonrpc": "2.0", "id": 2, "method": "ping",
                             "params": {"_meta": {"traceparent": META_PARENT}}}):  # fmt: skip
                process.stdin.write(orjson.dumps(message) + b"\n")
                process.stdin.flush()
                assert orjson.loads(process.stdout.readline())["id"] == message["id"]
            process.stdin.close()  # end of input: the server stops
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    [initialize] = receiver.named("initialize")
    [ping] = receiver.named("ping")
    assert attributes(initialize.attributes)["network.transport"] == "pipe"
    assert "network.protocol.name" not in attributes(ping.attributes)
    assert (ping.trace_id.hex(), ping.parent_span_id.hex()) == (META_TRACE, META_SPAN)
