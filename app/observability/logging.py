"""structlog configured once, writing JSON lines in the shape Cloud Logging reads.

A line written while a span is current (the request's own span, or the trace context its ``traceparent``
carried, with tracing on or off) names it as Cloud Logging correlates logs with traces:
``logging.googleapis.com/trace`` (``projects/PROJECT/traces/TRACE_ID``; the bare trace id without a project),
``logging.googleapis.com/spanId`` and ``logging.googleapis.com/trace_sampled``. ``requestId`` is the request's
``X-Request-ID`` when it sent a valid one (bound by the HTTP middleware), else the trace id.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, WrappedLogger

from app.settings import LogFormat

__all__ = ["SPAN_ID", "TRACE", "TRACE_SAMPLED", "configure_logging", "request_id", "trace_fields"]

TRACE = "logging.googleapis.com/trace"
SPAN_ID = "logging.googleapis.com/spanId"
TRACE_SAMPLED = "logging.googleapis.com/trace_sampled"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


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


def configure_logging(level: str, fmt: LogFormat, *, gcp_project: str | None = None) -> None:
    """Route structlog and the standard library (uvicorn included) through one renderer on stderr; ``gcp_project``
    is the Google Cloud project whose Cloud Trace holds the traces the lines name."""
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
        final = [structlog.processors.dict_tracebacks, _cloud_logging_shape, renderer]
    else:
        final = [structlog.dev.ConsoleRenderer()]
    structlog.configure(
        # filter_by_level first: a line below the level costs nothing further (the access line is per request).
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # One access line per request comes from the server itself, in Cloud Logging's httpRequest shape.
    logging.getLogger("uvicorn.access").handlers[:] = []
    logging.getLogger("uvicorn.access").propagate = False
