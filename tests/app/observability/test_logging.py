"""Log lines: JSON in Cloud Logging's shape, each naming the trace and span it was written in (with tracing on or
off), and the request's ``X-Request-ID`` as ``requestId``, echoed on the response."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from app.observability import access, tracing
from app.observability.logging import SPAN_ID, TRACE, TRACE_SAMPLED, request_id, trace_fields
from app.settings import LogFormat
from tests.app.observability.conftest import Configure
from tests.app.observability.test_tracing import HEADER_PARENT, HEADER_SPAN, HEADER_TRACE, OtlpReceiver, otlp_env
from tests.conftest import RunningServer, start_server

HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
PROJECT = "my-project"


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (b"abc-123", "abc-123"),
        (b"req_1.2-Z", "req_1.2-Z"),
        (b"a" * 128, "a" * 128),
        (b"a" * 129, None),
        (b"", None),
        (b"has space", None),
        (b"line\nbreak", None),
        (b'quote"', None),
        ("caf\u00e9".encode(), None),
    ],
)
def test_a_request_id_is_kept_only_when_short_and_plain(header: bytes, kept: str | None) -> None:
    assert request_id(header) == kept


def in_span(sampled: bool) -> context.Context:
    span = SpanContext(int(HEADER_TRACE, 16), int(HEADER_SPAN, 16), is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))  # fmt: skip
    return trace.set_span_in_context(NonRecordingSpan(span))


def test_a_line_written_in_a_span_names_its_trace_in_cloud_loggings_fields() -> None:
    token = context.attach(in_span(sampled=True))
    try:
        line = trace_fields(PROJECT)(None, "info", {"event": "x"})
        bare = trace_fields(None)(None, "info", {"event": "x", "requestId": "abc-123"})
    finally:
        context.detach(token)
    assert line == {"event": "x", TRACE: f"projects/{PROJECT}/traces/{HEADER_TRACE}", SPAN_ID: HEADER_SPAN,
                    TRACE_SAMPLED: True, "requestId": HEADER_TRACE}  # fmt: skip
    assert (bare[TRACE], bare["requestId"]) == (HEADER_TRACE, "abc-123")  # without a project, the bare id


def test_a_line_of_an_unsampled_trace_says_so_and_a_line_outside_any_span_names_none() -> None:
    token = context.attach(in_span(sampled=False))
    try:
        unsampled = trace_fields(PROJECT)(None, "info", {"event": "x"})
    finally:
        context.detach(token)
    assert unsampled[TRACE_SAMPLED] is False
    assert trace_fields(PROJECT)(None, "info", {"event": "x"}) == {"event": "x"}


# -- a real server's log ---------------------------------------------------------------------------------------------


def lines_of(server: RunningServer) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be a JSON object in Cloud Logging's shape."""
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    for line in lines:
        assert {"severity", "message", "time"} <= set(line), line
    return lines


def catalog_calling(upstream: OtlpReceiver, tmp_path: Path) -> Path:
    """A catalogue with echo and an http tool that calls ``upstream`` (whose call the server logs)."""
    path = tmp_path / "catalog.yaml"
    path.write_text(
        f"allowedHosts: ['127.0.0.1:{upstream.port}']\n"
        "tools:\n"
        "  - {name: echo, description: Echo., builtin: echo}\n"
        f"  - {{kind: http, name: fetch, description: Fetch., url: '{upstream.url}/ping'}}\n",
        encoding="utf-8",
    )
    return path


def mcp(server: RunningServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json", **headers}
    return httpx.post(f"{server.url}/mcp", content=orjson.dumps(body), headers=sent, timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("traced", [False, True], ids=["tracing-off", "tracing-on"])
def test_the_lines_of_a_request_with_traceparent_name_its_trace_and_its_request_id(
    tmp_path: Path, traced: bool
) -> None:
    upstream = OtlpReceiver()  # the http tool's upstream and, with tracing on, the OTLP receiver
    no_endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
    env = otlp_env(upstream) if traced else no_endpoint
    args = ["--no-auth", "--log-format", "json", "--catalog", str(catalog_calling(upstream, tmp_path))]
    server = start_server(tmp_path, args, env={**env, "GOOGLE_CLOUD_PROJECT": PROJECT})
    try:
        opened = mcp(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": HELLO},
                     traceparent=HEADER_PARENT, **{"X-Request-ID": "abc-123"})  # fmt: skip
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        fetched = mcp(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "fetch"}},
                      traceparent=HEADER_PARENT, **{"X-Request-ID": "abc-123"}, **session)  # fmt: skip
        unnamed = mcp(server, {"jsonrpc": "2.0", "id": 3, "method": "ping"}, traceparent=HEADER_PARENT,
                      **{"X-Request-ID": "not a valid id"}, **session)  # fmt: skip
        plain = mcp(server, {"jsonrpc": "2.0", "id": 4, "method": "ping"}, **session)
    finally:
        server.stop()
        upstream.close()

    assert fetched.json()["result"]["isError"] is False
    assert (opened.headers["x-request-id"], fetched.headers["x-request-id"]) == ("abc-123", "abc-123")
    assert unnamed.headers["x-request-id"] == HEADER_TRACE  # an unusable id is replaced by the trace id
    lines = lines_of(server)
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines: the same shape
    access = [line for line in lines if line["message"] == "request"]
    assert [line.get("mcp_method") for line in access] == ["initialize", "tools/call", "ping", "ping"]
    [call] = [line for line in lines if line["message"] == "upstream call"]  # written while the tool ran
    trace_field = f"projects/{PROJECT}/traces/{HEADER_TRACE}"
    for line in (*access[:3], call):
        assert (line[TRACE], line[TRACE_SAMPLED]) == (trace_field, True)
    assert (access[0]["requestId"], access[1]["requestId"], call["requestId"]) == ("abc-123",) * 3
    assert access[2]["requestId"] == HEADER_TRACE
    # The access line and the lines written during the request name the same span: the request's own span with
    # tracing on, else the caller's.
    assert call[SPAN_ID] == access[1][SPAN_ID]
    if traced:
        spans = {span.name: span.span_id.hex() for _, span in upstream.spans()}
        assert (access[0][SPAN_ID], access[1][SPAN_ID]) == (spans["initialize"], spans["tools/call fetch"])
        assert access[3][TRACE].startswith(f"projects/{PROJECT}/traces/")  # a trace of its own
        assert plain.headers["x-request-id"] == access[3][TRACE].rpartition("/")[2] == access[3]["requestId"]
    else:
        assert {access[0][SPAN_ID], access[1][SPAN_ID]} == {HEADER_SPAN}
        assert TRACE not in access[3]  # no trace context, nothing recorded: nothing to name
        assert "requestId" not in access[3]
        assert "x-request-id" not in plain.headers


# -- one sink for every line ------------------------------------------------------------------------------------------


def test_library_lines_and_access_lines_share_one_sink_in_the_order_written(logging_to_file: Configure) -> None:
    read = logging_to_file(LogFormat.JSON)
    logging.getLogger("uvicorn.error").info("before")
    access_log = access.access_log()
    assert access_log is not None
    exchange = tracing.Exchange("http", "1.1", ("127.0.0.1", 1))
    with exchange:
        access_log.write({"path": "/mcp", "headers": []}, "POST", 200, 2, 0.001, None, b"", exchange)
    structlog.get_logger("app.x").warning("after", detail=1)
    logging.getLogger("httpx").warning("a library's line")
    lines = [json.loads(line) for line in read().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.error", "before"),
        ("app.middleware", "request"),
        ("app.x", "after"),
        ("httpx", "a library's line"),
    ]


@pytest.mark.parametrize("name", ["uvicorn", "uvicorn.error"])
def test_uvicorns_lines_follow_the_configured_level_whatever_was_set_on_its_loggers_before(
    logging_to_file: Configure, name: str
) -> None:
    """An embedding, or a uvicorn.Config given a log_level, sets uvicorn's loggers' own levels; the server's logging
    configuration is the one owner of levels, so its INFO lines are written at INFO."""
    logging.getLogger(name).setLevel(logging.WARNING)
    read = logging_to_file(LogFormat.JSON)
    logging.getLogger(name).info("Started server process")
    assert [json.loads(line)["message"] for line in read().splitlines()] == ["Started server process"]


def test_every_line_but_the_access_line_is_written_at_once(tmp_path: Path, logging_to_file: Configure) -> None:
    """Only the access line waits in the sink's buffer; a warning or an error (the last words before a crash) is on
    stderr when the call that logged it returns, after the access lines before it."""
    logging_to_file(LogFormat.JSON)
    written = tmp_path / "log-0"
    access_log = access.access_log()
    assert access_log is not None
    exchange = tracing.Exchange("http", "1.1", ("127.0.0.1", 1))
    with exchange:
        access_log.write({"path": "/mcp", "headers": []}, "POST", 200, 2, 0.001, None, b"", exchange)
    assert written.read_bytes() == b""  # the access line waits for the writer thread (its interval is long here)
    structlog.get_logger("app.x").error("the upstream is gone")
    logging.getLogger("uvicorn.error").warning("a library's warning")
    lines = [json.loads(line) for line in written.read_bytes().splitlines()]
    assert [line["message"] for line in lines] == ["request", "the upstream is gone", "a library's warning"]


def test_uvicorns_own_access_logger_stays_off(logging_to_file: Configure) -> None:
    read = logging_to_file(LogFormat.JSON)
    logging.getLogger("uvicorn.access").info("GET / 200")
    assert read() == b""
