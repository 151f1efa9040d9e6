"""structlog configured once, writing JSON lines in the shape Cloud Logging reads, every line of the process through
one :class:`~app.observability.sink.LineSink` on stderr (and the access line straight to it: :mod:`.access`).

A line written while a span is current (the request's own span, or the trace context its ``traceparent``
carried, with tracing on or off) names it as Cloud Logging correlates logs with traces:
``logging.googleapis.com/trace`` (``projects/PROJECT/traces/TRACE_ID``; the bare trace id without a project),
``logging.googleapis.com/spanId`` and ``logging.googleapis.com/trace_sampled``. ``requestId`` is the request's
``X-Request-ID`` when it sent a valid one (bound by the HTTP middleware), else the trace id.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from opentelemetry import trace
from pydantic import SecretStr
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, WrappedLogger

from app.observability import sink as sinks
from app.observability.redaction import RedactingFormatter, redactor
from app.settings import LogFormat, Settings

__all__ = [
    "LIBRARY_LOGGERS",
    "SPAN_ID",
    "TRACE",
    "TRACE_SAMPLED",
    "SinkHandler",
    "close_logging",
    "configure_logging",
    "guard_logs",
    "quiet_libraries",
    "request_id",
    "trace_fields",
]

TRACE = "logging.googleapis.com/trace"
SPAN_ID = "logging.googleapis.com/spanId"
TRACE_SAMPLED = "logging.googleapis.com/trace_sampled"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")
# Third-party loggers that write URLs, headers or payloads below WARNING (httpx: "HTTP Request: GET <url>" at INFO,
# with the query string an upstream's API key may travel in); held to ERLMCP_LIBRARY_LOG_LEVEL.
LIBRARY_LOGGERS = (
    "httpx",
    "httpcore",
    "urllib3",
    "hpack",
    "h2",
    "h11",
    "websockets",
    "redis",
    "multipart",
    "python_multipart",
    "google.auth",
    "google.api_core",
    "grpc",
)
# A traceback in the log names its frames, never their local variables (a credential may be one).
_TRACEBACKS = structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


def request_id(value: bytes) -> str | None:
    """An ``X-Request-ID`` header fit for the log (1 to 128 of ``A-Za-z0-9._-``), else None."""
    return value.decode("ascii") if _REQUEST_ID.fullmatch(value) else None


def trace_fields(project: str | None) -> Callable[[WrappedLogger, str, EventDict], EventDict]:
    """The processor adding the current span's Cloud Logging trace fields (and ``requestId``) to a line."""
    prefix = f"projects/{project}/traces/" if project else ""

    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            trace_id = format(span.trace_id, "032x")
            event_dict[TRACE] = prefix + trace_id
            event_dict[SPAN_ID] = format(span.span_id, "016x")
            event_dict[TRACE_SAMPLED] = span.trace_flags.sampled
            event_dict.setdefault("requestId", trace_id)
        return event_dict

    return add


def _cloud_logging_shape(_: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Rename keys to Cloud Logging's: ``severity`` (upper case), ``message``, ``time``."""
    event_dict["severity"] = event_dict.pop("level", method).upper()
    event_dict["message"] = event_dict.pop("event", "")
    event_dict["time"] = event_dict.pop("timestamp", None)
    return event_dict


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def quiet_libraries(level: str, floor: str) -> None:
    """Hold the :data:`LIBRARY_LOGGERS` to ``level`` (WARNING by default: their problems, not every request), and
    never below ``floor``, the server's own level (their records reach the handler whatever the root's level)."""
    threshold = max(logging.getLevelNamesMapping()[level], logging.getLevelNamesMapping()[floor])
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(threshold)


def guard_logs(settings: Settings) -> None:
    """What the settings say about the log's hygiene: the third-party loggers' level, and the secrets the redactor
    removes from every line (each ``SecretStr`` setting: the Redis URL's password, the request-state key)."""
    quiet_libraries(settings.library_log_level, settings.log_level)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if "://" in secret:
                redactor().add_url(secret)  # a URL's password is the secret; its host is worth seeing
            else:
                redactor().add(secret)


class SinkHandler(logging.Handler):
    """The standard library's handler that writes each formatted record, as one line, through a
    :class:`~app.observability.sink.LineSink` at once (:meth:`~app.observability.sink.LineSink.write_now`), after the
    access lines it holds: only the access line is buffered."""

    def __init__(self, sink: sinks.LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write_now((self.format(record) + "\n").encode("utf-8", "backslashreplace"))
        except RecursionError:  # as logging.StreamHandler does
            raise
        except Exception:
            self.handleError(record)


def configure_logging(
    level: str,
    fmt: LogFormat,
    *,
    gcp_project: str | None = None,
    library_level: str = "WARNING",
    access_log: bool = True,
    flush_seconds: float = sinks.INTERVAL,
    line_sink: sinks.LineSink | None = None,
) -> None:
    """Route structlog, the standard library (uvicorn included) and warnings through one renderer, every line
    through the process's :func:`~app.observability.redaction.redactor` and one
    :class:`~app.observability.sink.LineSink` on stderr (``line_sink``, else one written every ``flush_seconds``,
    closed by :func:`close_logging` and at exit); ``gcp_project`` is the Google Cloud project whose Cloud Trace
    holds the traces the lines name; the :data:`LIBRARY_LOGGERS` are held to ``library_level``. ``access_log``:
    whether each HTTP request writes its access line (in JSON, straight to the sink: :mod:`.access`)."""
    from app.observability import access  # imports this module's constants

    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        trace_fields(gcp_project),
    ]
    renderer: Any
    if use_json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        final = [_TRACEBACKS, _cloud_logging_shape, renderer]
    else:
        final = [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]  # no locals
    structlog.configure(
        # filter_by_level first: a line below the level costs nothing further (the access line is per request).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = RedactingFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
        redactor=redactor(),
    )
    line_sink = line_sink or sinks.LineSink(sys.stderr.fileno(), interval=flush_seconds)
    before = sinks.install(line_sink)
    if before is not None and before is not line_sink:
        atexit.unregister(before.close)
        before.close()
    atexit.register(line_sink.close)  # the lines still buffered when the interpreter ends
    handler = SinkHandler(line_sink)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_libraries(library_level, level)
    logging.captureWarnings(True)  # a library's warning is a line like any other (and redacted like any other)
    for name in ("uvicorn", "uvicorn.error"):  # through the root's handler, at the root's level, whatever set them
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.NOTSET)
    # One access line per request comes from the server itself, in Cloud Logging's httpRequest shape.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
    if not access_log:
        access.use(None)
    elif use_json:
        access.use(access.JsonAccessLog(line_sink, project=gcp_project, redactor=redactor()))
    else:
        access.use(access.StructlogAccessLog())


def close_logging() -> None:
    """Write the lines still buffered and stop the sink's writer thread: at shutdown, once the server has stopped
    (lines written later go straight out). Idempotent."""
    line_sink = sinks.process_sink()
    if line_sink is not None:
        line_sink.close()
