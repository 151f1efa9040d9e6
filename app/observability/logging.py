"""structlog configured once, writing JSON lines in the shape Cloud Logging reads."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, WrappedLogger

from app.settings import LogFormat

__all__ = ["configure_logging"]


def _cloud_logging_shape(_: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Rename keys to Cloud Logging's: ``severity`` (upper case), ``message``, ``time``."""
    event_dict["severity"] = event_dict.pop("level", method).upper()
    event_dict["message"] = event_dict.pop("event", "")
    event_dict["time"] = event_dict.pop("timestamp", None)
    return event_dict


def _orjson_dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(level: str, fmt: LogFormat) -> None:
    """Route structlog and the standard library (uvicorn included) through one renderer on stderr."""
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
