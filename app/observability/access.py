"""The access line: one per HTTP request, in Cloud Logging's ``httpRequest`` shape, written by
:class:`~app.middleware.ObserveRequests` when the request ends.

In JSON (production) it is :class:`JsonAccessLog`: one byte template filled in (:class:`AccessLineFormat`) and
the process's :class:`~app.observability.sink.LineSink`, a few microseconds, where structlog and the standard
library's logging took about 65 (a stack walk, a ``LogRecord``, a dozen processors, a handler lock, a ``write(2)``).
The line is byte for byte the one structlog's chain wrote (``tests/app/observability/test_access.py`` renders both,
and checks the template against ``orjson.dumps`` of the fields' dict for any request):

``httpRequest{requestMethod, requestUrl, status, responseSize, latency, remoteIp, userAgent, protocol}``, the
``mcp_method`` and ``mcp_outcome`` the endpoint noted, ``requestId`` (the request's valid ``X-Request-ID``, else
after the trace fields the trace id), ``logger``, the ``logging.googleapis.com/`` trace fields of the span the request
was answered in, ``severity``, ``message`` and ``time`` (structlog's UTC ISO stamp).

Only what the client controls can hold a credential: the user agent, the path and the request id, which go through
the process's :class:`~app.observability.redaction.Redactor` (every other field comes from the server or a bounded
set). In console format (a developer's terminal) the line still goes through structlog: :class:`StructlogAccessLog`.

Tests see the lines through :func:`captured`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson
import structlog
from opentelemetry.trace import SpanContext
from starlette.types import Scope

from app.observability.logging import SPAN_ID, TRACE, TRACE_SAMPLED
from app.observability.redaction import Redactor, redactor
from app.observability.sink import LineSink
from app.observability.tracing import Exchange

__all__ = [
    "LOGGER",
    "AccessLog",
    "JsonAccessLog",
    "StructlogAccessLog",
    "AccessLineFormat",
    "access_log",
    "captured",
    "iso_stamp",
    "use",
]

LOGGER = "app.middleware"  # the logger the line has always named
_PROTOCOLS = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2"}
_SEPARATOR = "\n"  # between the client's strings when they are searched at once (no header or path holds one)
# The line's template: what orjson wrote for the dict of the line's fields, with a hole for each value the request
# gives (see AccessLineFormat.line); the trace fields' template; the JSON of the methods the middleware names and of
# the usual protocols, made once.
_LINE = (
    b'{"httpRequest":{"requestMethod":%b,"requestUrl":%b,"status":%d,"responseSize":"%d","latency":"%.6fs",'
    b'"remoteIp":%b,"userAgent":%b,"protocol":%b}%b%b,"logger":' + orjson.dumps(LOGGER) + b"%b"
    b',"severity":"INFO","message":"request","time":"%b"}\n'
)
_TRACE = b',%b:%%b,%b:"%%016x",%b:%%b' % (orjson.dumps(TRACE), orjson.dumps(SPAN_ID), orjson.dumps(TRACE_SAMPLED))
_SAMPLED = {True: b"true", False: b"false"}
_METHODS = {
    method: orjson.dumps(method) for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER")
}
_PROTOCOL_JSON = {version: orjson.dumps(protocol) for version, protocol in _PROTOCOLS.items()}


class AccessLog(Protocol):
    """Writes the access line of a request that has ended."""

    def write(
        self,
        scope: Scope,
        method: str,
        status: int,
        sent: int,
        elapsed: float,
        request_id: str | None,
        user_agent: bytes,
        exchange: Exchange,
    ) -> None:
        """``method``: the request's (or ``OTHER``); ``sent``: the body's bytes; ``elapsed``: seconds;
        ``request_id``: its valid ``X-Request-ID``; ``user_agent``: its last ``User-Agent`` header's value, as
        sent (empty: none); ``exchange``: what names the span it was answered in."""


_start = 0  # the first nanosecond of the second whose date and time iso_stamp made last
_prefix = b"1970-01-01T00:00:00"


def iso_stamp(ns: int) -> bytes:
    """``ns`` (since the epoch) as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it: ISO 8601 in UTC with
    ``Z``, microseconds floored and left out when they are 0. The date and time of the second are made once (within
    it, only the microseconds are worked out, from a difference small enough for a one-digit int)."""
    global _start, _prefix
    micro = (ns - _start) // 1000
    if not 0 <= micro < 1_000_000:
        second = ns // 1_000_000_000
        _start, _prefix = second * 1_000_000_000, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        micro = (ns - _start) // 1000
    return b"%b.%06dZ" % (_prefix, micro) if micro else _prefix + b"Z"


def _shown_agent(sent: bytes) -> str | None:
    """The User-Agent as the line shows it: the header's bytes as latin-1 text, None for none (or an empty one)."""
    return sent.decode("latin-1") or None


def _http_request(
    scope: Scope, method: str, status: int, sent: int, elapsed: float, user_agent: str | None, url: str
) -> dict[str, Any]:
    """Cloud Logging's ``httpRequest`` of a request (``user_agent`` and ``url`` as the line shows them)."""
    client = scope.get("client")
    version = scope.get("http_version", "1.1")
    return {
        "requestMethod": method,
        "requestUrl": url,
        "status": status,
        "responseSize": str(sent),
        "latency": f"{elapsed:.6f}s",
        "remoteIp": client[0] if client else None,
        "userAgent": user_agent,
        "protocol": _PROTOCOLS.get(version) or f"HTTP/{version}",
    }


class AccessLineFormat:
    """The access line (see the module's description), rendered from a byte template: a field the server controls
    is written in its known shape (a status, a size, a latency, a method of the middleware's, a protocol, the trace
    and span ids in hex), and any text that is not one of those (the user agent, the path and the request id, which
    the client controls; the remote address; the endpoint's notes; the trace with its project) goes through
    ``orjson`` for its JSON escaping, and is refused as ``orjson`` refuses it (a lone surrogate). ``project``: the
    Google Cloud project whose Cloud Trace holds the traces; ``clock``: nanoseconds since the epoch (tests fix it)."""

    def __init__(self, *, project: str | None, redactor: Redactor, clock: Callable[[], int] = time.time_ns) -> None:
        self._prefix = f"projects/{project}/traces/" if project else ""
        self._redact = redactor.redact
        self._clock = clock

    def line(
        self,
        scope: Scope,
        method: str,
        status: int,
        sent: int,
        elapsed: float,
        request_id: str | None,
        sent_agent: bytes,
        answered: SpanContext | None,
    ) -> bytes:
        """The line's JSON with its newline: its fields in the order structlog's chain wrote them (``sent_agent``:
        the request's User-Agent as sent, empty for none)."""
        user_agent = _shown_agent(sent_agent)
        url = scope["path"]
        client_text = f"{user_agent or ''}{_SEPARATOR}{url}{_SEPARATOR}{request_id or ''}"
        if self._redact(client_text) is not client_text:  # a needle matched: redact each on its own
            user_agent = self._redact(user_agent) if user_agent else user_agent
            url = self._redact(url)
            request_id = self._redact(request_id) if request_id else request_id
        client = scope.get("client")
        version = scope.get("http_version", "1.1")
        noted = scope.get("erlmcp")
        trace = b""
        if answered is not None:
            trace_id = f"{answered.trace_id:032x}"
            sampled = _SAMPLED[answered.trace_flags.sampled]
            trace = _TRACE % (orjson.dumps(self._prefix + trace_id), answered.span_id, sampled)
            if request_id is None:
                trace += b',"requestId":"%b"' % trace_id.encode()
        return _LINE % (
            _METHODS.get(method) or orjson.dumps(method),
            orjson.dumps(url),
            status,
            sent,
            elapsed,
            orjson.dumps(client[0]) if client else b"null",
            orjson.dumps(user_agent),
            _PROTOCOL_JSON.get(version) or orjson.dumps(f"HTTP/{version}"),
            b"," + orjson.dumps(noted, default=str)[1:-1] if noted else b"",  # the endpoint's notes
            b',"requestId":' + orjson.dumps(request_id) if request_id is not None else b"",
            trace,
            iso_stamp(self._clock()),
        )


class JsonAccessLog:
    """The access line as JSON straight to ``sink`` (see the module's description and :class:`AccessLineFormat`)."""

    def __init__(
        self,
        sink: LineSink,
        *,
        project: str | None,
        redactor: Redactor,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.sink = sink
        self._line = AccessLineFormat(project=project, redactor=redactor, clock=clock).line

    def write(
        self,
        scope: Scope,
        method: str,
        status: int,
        sent: int,
        elapsed: float,
        request_id: str | None,
        user_agent: bytes,
        exchange: Exchange,
    ) -> None:
        line = self._line(scope, method, status, sent, elapsed, request_id, user_agent, exchange.answered_under)
        if _captures:
            _capture(orjson.loads(line))
        self.sink.put(line)


class StructlogAccessLog:
    """The access line through structlog and the standard library's logging, as every other line: console format,
    and a process whose logging was not configured (a test's)."""

    def __init__(self) -> None:
        self._log = structlog.get_logger(LOGGER)

    def write(
        self,
        scope: Scope,
        method: str,
        status: int,
        sent: int,
        elapsed: float,
        request_id: str | None,
        user_agent: bytes,
        exchange: Exchange,
    ) -> None:
        if _captures:
            answered = exchange.answered_under
            _capture(
                orjson.loads(_FOR_CAPTURE.line(scope, method, status, sent, elapsed, request_id, user_agent, answered))
            )
        with exchange.reporting():  # the line names the span the request was answered in
            agent = _shown_agent(user_agent)
            http_request = _http_request(scope, method, status, sent, elapsed, agent, scope["path"])
            self._log.info("request", httpRequest=http_request, **scope.get("erlmcp", {}))


_captures: list[list[dict[str, Any]]] = []


def _capture(line: dict[str, Any]) -> None:
    for lines in _captures:
        lines.append(line)


@contextlib.contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """For tests: the access lines written meanwhile, each as its JSON object (what :class:`JsonAccessLog` writes,
    whichever access log the process has)."""
    lines: list[dict[str, Any]] = []
    _captures.append(lines)
    try:
        yield lines
    finally:
        _captures.remove(lines)


_FOR_CAPTURE = AccessLineFormat(project=None, redactor=redactor())
_process: AccessLog | None = StructlogAccessLog()


def use(access: AccessLog | None) -> AccessLog | None:
    """Make ``access`` the process's access log (None: no access line); returns the one it replaces.
    :func:`~app.observability.logging.configure_logging` calls it."""
    global _process
    before, _process = _process, access
    return before


def access_log() -> AccessLog | None:
    """The process's access log: what the logging configuration chose (None: the access line is off); until it is
    configured, the line through structlog, wherever structlog's configuration sends it."""
    return _process
