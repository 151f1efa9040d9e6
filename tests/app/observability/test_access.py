"""The access line: one per request, rendered straight to JSON without the standard library's logging, byte for
byte the line structlog's chain renders for the same request (the golden tests below render both); in console
format (a developer's terminal) it still goes through structlog. Only what the client controls can hold a
credential, and that is redacted as every other line is."""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanContext, TraceFlags

from app.observability import access, tracing
from app.observability.logging import SPAN_ID, TRACE, TRACE_SAMPLED
from app.observability.logging import request_id as valid_request_id
from app.observability.redaction import redactor
from app.settings import LogFormat
from tests.app.observability.conftest import Configure
from tests.app.observability.test_tracing import HEADER_PARENT, HEADER_SPAN, HEADER_TRACE

PROJECT = "my-project"
REQUEST_SPAN = SpanContext(int("4bf92f3577b34da6a3ce929d0e0e4736", 16), int("b395f2c06a24757b", 16),
                           is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip
SECRET = f"configured-{secrets.token_hex(8)}"  # a secret the settings name (as the Redis password would be)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass
class Request:
    """What the middleware knows of a request when it writes the access line."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    path: str = "/mcp"
    method: str = "POST"
    status: int = 200
    sent: int = 90
    elapsed: float = 0.0019334
    client: tuple[str, int] | None = ("10.1.2.3", 50123)
    http_version: str = "1.1"
    erlmcp: dict[str, str] | None = field(default_factory=lambda: {"mcp_method": "tools/call", "mcp_outcome": "ok"})
    answered_in_span: bool = False  # the request's own span (tracing on), else the caller's (headers) if any

    def scope(self) -> dict[str, Any]:
        found: dict[str, Any] = {"type": "http", "method": self.method, "path": self.path, "headers": self.headers,
                                 "http_version": self.http_version, "client": self.client}  # fmt: skip
        if self.erlmcp is not None:
            found["erlmcp"] = self.erlmcp
        return found


UA = (b"user-agent", b"python-httpx/0.28.1")
CASES = {
    "plain": Request([UA]),
    "request-id": Request([UA, (b"x-request-id", b"abc-123")]),
    "traceparent": Request([UA, (b"traceparent", HEADER_PARENT.encode())]),
    "traceparent-and-request-id": Request([UA, (b"traceparent", HEADER_PARENT.encode()), (b"x-request-id", b"r-1")]),
    "answered-in-a-request-span": Request([UA, (b"x-request-id", b"r-2")], answered_in_span=True),
    "unsampled": Request([UA, (b"traceparent", f"00-{HEADER_TRACE}-{HEADER_SPAN}-00".encode())]),
    "bearer-in-user-agent": Request([(b"user-agent", b"curl/8 Authorization: Bearer abcdefghijklmnopqrstuvwxyz")]),
    "jwt-in-user-agent": Request([(b"user-agent", b"x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl")]),
    "configured-secret-in-user-agent-and-url": Request(
        [(b"user-agent", f"agent {SECRET}".encode())], path=f"/mcp/{SECRET}/x"
    ),  # fmt: skip
    "secret-shaped-request-id": Request([UA, (b"x-request-id", b"eyJhbGciOi.eyJzdWIi.c2ln")]),
    "no-user-agent-no-client": Request([], client=None),
    "two-user-agents": Request([(b"user-agent", b"first"), (b"user-agent", b"second")]),
    "latin-1-user-agent": Request([(b"user-agent", b'caf\xe9 "quoted" back\\slash')]),
    "not-found": Request([UA], path="/no-such-path", method="GET", status=404, sent=22, erlmcp=None),
    "other-method-http-2": Request([UA], method="OTHER", status=405, http_version="2", erlmcp=None),
    "empty-user-agent-500": Request([(b"user-agent", b"")], status=500, elapsed=12.5, sent=0),
}


def write(log: access.AccessLog, request: Request) -> None:
    """Write ``request``'s access line as the middleware does: under its exchange, its request id bound."""
    scope = request.scope()
    headers = scope["headers"]
    carrier = headers if any(name == b"traceparent" for name, _ in headers) else None
    request_id = next((valid_request_id(v) for n, v in headers if n == b"x-request-id"), None)
    agent = next((v for n, v in reversed(headers) if n == b"user-agent"), b"")
    exchange = tracing.Exchange("http", request.http_version, request.client, carrier)
    bound = structlog.contextvars.bind_contextvars(requestId=request_id) if request_id is not None else {}
    try:
        with exchange:
            if request.answered_in_span:
                exchange.span_context = REQUEST_SPAN
            log.write(scope, request.method, request.status, request.sent, request.elapsed, request_id, agent, exchange)
    finally:
        structlog.contextvars.reset_contextvars(**bound)


def nanoseconds(stamp: str) -> int:
    """The instant a structlog time stamp names, plus a fraction of a microsecond (which the stamp floors)."""
    instant = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (instant - EPOCH) // datetime.timedelta(microseconds=1) * 1000 + 999


@pytest.mark.parametrize("name", list(CASES))
def test_the_access_line_is_byte_for_byte_the_line_structlog_renders(logging_to_file: Configure, name: str) -> None:
    redactor().add(SECRET)
    read = logging_to_file(LogFormat.JSON, gcp_project=PROJECT)
    write(access.StructlogAccessLog(), CASES[name])
    [old] = read().splitlines()
    stamp = orjson.loads(old)["time"]
    new_log = access.access_log()
    assert isinstance(new_log, access.JsonAccessLog)
    fixed = access.JsonAccessLog(new_log.sink, project=PROJECT, redactor=redactor(), clock=lambda: nanoseconds(stamp))
    write(fixed, CASES[name])
    [_, new] = read().splitlines()
    assert new == old
    assert SECRET.encode() not in new
    for secret in (b"abcdefghijklmnopqrstuvwxyz", b"c2lnbmF0dXJl", b"eyJzdWIi"):
        assert secret not in new


def test_without_a_project_the_trace_is_the_bare_id(logging_to_file: Configure) -> None:
    read = logging_to_file(LogFormat.JSON)
    write(access.StructlogAccessLog(), CASES["traceparent"])
    [old] = read().splitlines()
    fixed = access.JsonAccessLog(access.access_log().sink, project=None, redactor=redactor(),  # type: ignore[union-attr]
                                 clock=lambda: nanoseconds(orjson.loads(old)["time"]))  # fmt: skip
    write(fixed, CASES["traceparent"])
    [_, new] = read().splitlines()
    assert new == old
    assert orjson.loads(new)["logging.googleapis.com/trace"] == HEADER_TRACE


@pytest.mark.parametrize(
    "instant",
    [
        EPOCH,  # the second iso_stamp starts with
        datetime.datetime(2026, 11, 28, 20, 44, 18, tzinfo=datetime.UTC),  # no microseconds: none written
        datetime.datetime(2026, 11, 28, 20, 44, 18, 1, tzinfo=datetime.UTC),
        datetime.datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.UTC),
        datetime.datetime(2027, 1, 1, 0, 0, 0, 500000, tzinfo=datetime.UTC),
    ],
)
def test_the_time_is_written_as_structlogs_utc_iso_stamp(instant: datetime.datetime) -> None:
    ns = (instant - EPOCH) // datetime.timedelta(microseconds=1) * 1000
    expected = instant.isoformat().replace("+00:00", "Z")  # what structlog's TimeStamper("iso", utc=True) writes
    assert access.iso_stamp(ns) == access.iso_stamp(ns + 999) == expected.encode()
    assert access.iso_stamp(ns - 1_000_000_000) != expected.encode()  # a second earlier: not a stale cached second
    assert access.iso_stamp(ns) == expected.encode()  # and back


def test_in_console_format_the_access_line_still_goes_through_structlog_redacted(logging_to_file: Configure) -> None:
    read = logging_to_file(LogFormat.CONSOLE)
    assert isinstance(access.access_log(), access.StructlogAccessLog)
    write(access.access_log(), CASES["bearer-in-user-agent"])  # type: ignore[arg-type]
    written = read().decode()
    assert "request" in written
    assert "curl/8 Authorization: Bearer [redacted]" in written
    assert "abcdefghijklmnopqrstuvwxyz" not in written


def test_with_the_access_log_off_there_is_none(logging_to_file: Configure) -> None:
    logging_to_file(LogFormat.JSON, access_log=False)
    assert access.access_log() is None


def test_the_capture_hook_sees_each_line_as_written(logging_to_file: Configure) -> None:
    read = logging_to_file(LogFormat.JSON, gcp_project=PROJECT)
    with access.captured() as lines:
        write(access.access_log(), CASES["traceparent-and-request-id"])  # type: ignore[arg-type]
    assert lines == [orjson.loads(read())]
    assert lines[0]["requestId"] == "r-1"


def dict_line(
    scope: dict[str, Any],
    method: str,
    status: int,
    sent: int,
    elapsed: float,
    request_id: str | None,
    answered: SpanContext | None,
    *,
    project: str | None,
    ns: int,
) -> dict[str, Any]:
    """The reference: the line's fields as a dict, in the order structlog's chain wrote them (what the access line
    was built from before its byte template, which the golden tests above tie to structlog's own rendering)."""
    redact = redactor().redact
    user_agent = dict(scope["headers"]).get(b"user-agent", b"").decode("latin-1") or None
    url = scope["path"]
    client_text = f"{user_agent or ''}\n{url}\n{request_id or ''}"
    if redact(client_text) is not client_text:
        user_agent = redact(user_agent) if user_agent else user_agent
        url = redact(url)
        request_id = redact(request_id) if request_id else request_id
    # httpRequest as the structlog path builds it (StructlogAccessLog), which the golden tests above render.
    line: dict[str, Any] = {"httpRequest": access._http_request(scope, method, status, sent, elapsed, user_agent, url)}
    noted = scope.get("erlmcp")
    if noted:
        line.update(noted)
    if request_id is not None:
        line["requestId"] = request_id
    line["logger"] = access.LOGGER
    if answered is not None:
        trace_id = f"{answered.trace_id:032x}"
        line[TRACE] = (f"projects/{project}/traces/" if project else "") + trace_id
        line[SPAN_ID] = f"{answered.span_id:016x}"
        line[TRACE_SAMPLED] = answered.trace_flags.sampled
        if request_id is None:
            line["requestId"] = trace_id
    line["severity"] = "INFO"
    line["message"] = "request"
    line["time"] = access.iso_stamp(ns).decode()
    return line


# Any text, lone surrogates included (which orjson refuses, in a dict as on its own), now and then with what JSON
# escapes or the redactor removes.
awkward = st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028", "\ud800", "\udfff", "é", "😀"])
anything = st.text(st.characters(exclude_categories=()), max_size=30) | st.tuples(
    st.text(max_size=10), awkward, st.text(max_size=10)
).map("".join)
credentials = st.sampled_from([SECRET, "Bearer abcdefghijklmnopqrstuvwxyz", "eyJhbGciOi.eyJzdWIi.c2ln", "u:pw@h"])
client_text = anything | st.tuples(anything, credentials, anything).map("".join)
notes = st.none() | st.fixed_dictionaries({}, optional={"mcp_method": anything, "mcp_outcome": anything})
spans = st.none() | st.builds(
    lambda trace, span, sampled: SpanContext(trace, span, is_remote=False, trace_flags=TraceFlags(sampled)),
    st.integers(1, 2**128 - 1),
    st.integers(1, 2**64 - 1),
    st.sampled_from([TraceFlags.DEFAULT, TraceFlags.SAMPLED]),
)


@settings(max_examples=400, deadline=None)
@given(
    user_agents=st.lists(
        st.binary(max_size=40) | client_text.map(lambda text: text.encode("utf-8", "replace")), max_size=3
    ),
    path=client_text,
    request_id=st.none() | client_text,
    method=st.sampled_from(["GET", "POST", "DELETE", "OTHER"]) | anything,
    status=st.integers(0, 999),
    sent=st.integers(0, 2**63 - 1),
    elapsed=st.floats(),
    client=st.sampled_from([None, ("10.1.2.3", 50123), ("::1", 8080), ("2001:db8::ff00:42:8329", 1)])
    | st.tuples(anything, st.integers(0, 65535)),
    http_version=st.sampled_from(["1.0", "1.1", "2", "3", "unknown", None]),
    noted=notes,
    answered=spans,
    project=st.none() | anything,
    ns=st.integers(0, 4_102_444_800 * 10**9),
)
def test_the_template_writes_the_bytes_orjson_wrote_for_the_dict(
    user_agents: list[bytes],
    path: str,
    request_id: str | None,
    method: str,
    status: int,
    sent: int,
    elapsed: float,
    client: tuple[str, int] | None,
    http_version: str | None,
    noted: dict[str, str] | None,
    answered: SpanContext | None,
    project: str | None,
    ns: int,
) -> None:
    redactor().add(SECRET)
    headers = [(b"host", b"example"), *((b"user-agent", agent) for agent in user_agents)]
    scope: dict[str, Any] = {"type": "http", "path": path, "headers": headers, "client": client}
    if http_version is not None:  # None: a scope without one
        scope["http_version"] = http_version
    if noted is not None:
        scope["erlmcp"] = noted
    form = access.AccessLineFormat(project=project, redactor=redactor(), clock=lambda: ns)
    reference = dict_line(scope, method, status, sent, elapsed, request_id, answered, project=project, ns=ns)
    fields = (scope, method, status, sent, elapsed, request_id, user_agents[-1] if user_agents else b"", answered)
    try:
        expected = orjson.dumps(reference, default=str, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError as refused:  # a lone surrogate: refused as it was
        with pytest.raises(orjson.JSONEncodeError, match=str(refused)):
            form.line(*fields)
        return
    assert form.line(*fields) == expected
