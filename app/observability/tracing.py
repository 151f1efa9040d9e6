"""Traces: one span per JSON-RPC request, in the shape of OpenTelemetry's MCP semantic conventions.

The app calls only the OpenTelemetry API. :func:`configure_tracing`, called by the entry point, sets up the SDK
for the request spans when the standard ``OTEL_*`` variables ask for the OTLP exporter and name an endpoint;
otherwise nothing is recorded and a request costs one check. Trace context is followed either way, so that log
lines name the caller's trace (:mod:`app.observability.logging`).

Spans follow "Semantic conventions for Model Context Protocol (MCP)" (status: Development) of the OpenTelemetry
GenAI conventions, https://opentelemetry.io/docs/specs/semconv/gen-ai/mcp/ (github.com/open-telemetry/
semantic-conventions-genai, docs/gen-ai/mcp.md): kind SERVER; named ``{mcp.method.name} {target}`` with the
tool or prompt as target (``tools/call echo``), else ``{mcp.method.name}``; attributes ``mcp.method.name``,
``jsonrpc.request.id``, ``mcp.session.id``, ``mcp.protocol.version``, ``mcp.resource.uri``, ``gen_ai.tool.name``
and ``gen_ai.operation.name`` (``execute_tool``), ``gen_ai.prompt.name``, ``network.transport`` (``tcp``;
``pipe`` for stdio), ``network.protocol.name`` and ``.version``, ``client.address`` and ``.port``. A JSON-RPC
error sets ``error.type`` and ``rpc.response.status_code`` (the code as a string) and status ERROR with the
error's message; a tool result with ``isError`` sets ``error.type`` ``tool_error`` and status ERROR.

The parent is the W3C trace context in the request's ``params._meta`` (``traceparent``, ``tracestate``) when it
carries one, else the one of the HTTP request that brought the message (:class:`Exchange`); as the convention
asks, a ``_meta`` parent gets a link to the HTTP one. A tool or prompt the catalogue does not offer is named
neither in span names nor in attributes: it is whatever the client sent. Methods this server does not know are
named ``(unknown)``, as in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import structlog
from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from app.features import Features
    from app.jsonrpc import Message
    from app.protocol.context import RequestContext
    from app.protocol.dispatcher import Outcome

__all__ = [
    "Exchange",
    "configure_tracing",
    "propagated_headers",
    "quiet",
    "traced",
    "tracer_provider",
    "use_tracer_provider",
]

log = structlog.get_logger(__name__)

DEFAULT_SERVICE_NAME = "erlmcp"
_RESOURCE_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})


class _State:
    """What :func:`configure_tracing` decided, for the whole process."""

    def __init__(self) -> None:
        self.tracer: trace.Tracer | None = None  # None: no SDK, spans are not recorded
        self.direct: Mapping[str, str] = {"network.transport": "tcp"}  # messages without HTTP: TCP, or stdio


_state = _State()


# -- configuration ---------------------------------------------------------------------------------------------


def _resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES``: ``key=value`` pairs, comma-separated, values percent-encoded."""
    pairs = (item.partition("=") for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","))
    return {key.strip(): unquote(value.strip()) for key, sep, value in pairs if sep and key.strip()}


def _where(url: str) -> str:
    """An endpoint fit for the log: scheme, host and path, no credentials or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def tracer_provider(environ: Mapping[str, str], *, service_version: str) -> TracerProvider | None:
    """The SDK tracer provider the ``OTEL_*`` variables ask for, or None: tracing off.

    On when ``OTEL_TRACES_EXPORTER`` is unset or ``otlp`` and ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; off with ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.
    Spans go in batches over OTLP/HTTP (protobuf); the exporter and the batch processor read their own
    ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*`` variables.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if "none" in exporters:
        return None
    if exporters - {"otlp"}:
        log.warning("tracing: only the otlp exporter is built in", ignored=sorted(exporters - {"otlp"}))
        if "otlp" not in exporters:
            return None
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol.strip().lower() != "http/protobuf":
        log.warning("tracing off: only OTLP over http/protobuf is built in", protocol=protocol)
        return None
    # The SDK is imported only when it is used: with tracing off, the process never loads it.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = environ.get("OTEL_SERVICE_NAME") or _resource_attributes(environ).get("service.name") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name, "service.version": service_version}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on", exporter="otlp", endpoint=_where(endpoint), service=name)
    return provider


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Record request spans with ``provider`` from now on (None: record none, propagate only)."""
    _state.tracer = provider.get_tracer("erlmcp") if provider is not None else None


def configure_tracing(environ: Mapping[str, str], *, service_version: str, stdio: bool = False) -> Callable[[], None]:
    """Record request spans with the SDK when the ``OTEL_*`` variables in ``environ`` ask for it (see
    :func:`tracer_provider`); returns what flushes and stops it, to call when the server stops. ``stdio``: messages
    that come without HTTP come on a pipe (else over TCP)."""
    _state.direct = {"network.transport": "pipe" if stdio else "tcp"}
    provider = tracer_provider(environ, service_version=service_version)
    use_tracer_provider(provider)
    # The provider stays the app's own, not OpenTelemetry's global one: instrumentation libraries follow the
    # global provider and would add spans of its own for every health probe.
    return provider.shutdown if provider is not None else lambda: None


# -- the HTTP request (or WebSocket connection) a message came in -----------------------------------------------


class _AsgiHeaders(Getter[Sequence[tuple[bytes, bytes]]]):
    """Reads ASGI headers (lower-case names, bytes) for the propagators."""

    def get(self, carrier: Sequence[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier: Sequence[tuple[bytes, bytes]]) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_ASGI_HEADERS = _AsgiHeaders()
_NOTHING = contextlib.nullcontext()
_EXCHANGE: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar("erlmcp_exchange", default=None)


def propagated_headers() -> frozenset[bytes]:
    """The header names the configured propagators read (``traceparent``, ``tracestate``, ``baggage``)."""
    return frozenset(field.lower().encode("latin-1") for field in propagate.get_global_textmap().fields)


class Exchange:
    """One HTTP request or WebSocket connection, as the messages it carries see it: the protocol and the client
    (for their spans), the trace context of its headers (their parent), and the last span opened under it (for
    the access line). Use it as a context manager around the request."""

    __slots__ = ("_token", "_attached", "client", "parent", "protocol", "span_context", "version")

    def __init__(
        self,
        protocol: str,
        version: str | None,
        client: tuple[str, int] | None,
        headers: Sequence[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.protocol = protocol
        self.version = version
        self.client = client
        self.parent = propagate.extract(headers, getter=_ASGI_HEADERS) if headers is not None else None
        self.span_context: SpanContext | None = None

    def __enter__(self) -> Exchange:
        self._token = _EXCHANGE.set(self)
        self._attached = context.attach(self.parent) if self.parent is not None else None
        return self

    def __exit__(self, *_: object) -> None:
        if self._attached is not None:
            context.detach(self._attached)
        _EXCHANGE.reset(self._token)

    @property
    def answered_under(self) -> SpanContext | None:
        """The span the request was answered in: the last request span, else the parent its headers carry."""
        if self.span_context is not None:
            return self.span_context
        if self.parent is None:
            return None
        carried = trace.get_current_span(self.parent).get_span_context()
        return carried if carried.is_valid else None

    @property
    def trace_id(self) -> str | None:
        """The trace the request was answered in (32 hex digits), if any."""
        if self.span_context is None and self.parent is None:
            return None  # most requests: no request span, no trace context in the headers
        answered = self.answered_under
        return format(answered.trace_id, "032x") if answered is not None else None

    def reporting(self) -> contextlib.AbstractContextManager[object]:
        """Make the span the request was answered in current, for the lines that report on it afterwards."""
        if self.span_context is None:
            return _NOTHING  # the parent (if any) is current already
        return trace.use_span(NonRecordingSpan(self.span_context))

    def attributes(self) -> dict[str, Any]:
        """``network.*`` and ``client.*`` of the messages' spans."""
        found: dict[str, Any] = {"network.transport": "tcp", "network.protocol.name": self.protocol}
        if self.version:
            found["network.protocol.version"] = self.version
        if self.client:
            found["client.address"], found["client.port"] = self.client[0], self.client[1]
        return found


# -- one span per request ----------------------------------------------------------------------------------------


def _meta_carrier(message: Message) -> dict[str, str] | None:
    """The trace context fields of ``params._meta`` (only strings), or None when there are none."""
    meta = message.params.get("_meta")
    if type(meta) is not dict:
        return None
    fields = propagate.get_global_textmap().fields
    carrier = {field: value for field in fields if type(value := meta.get(field)) is str}
    return carrier or None


def quiet(message: Message) -> bool:
    """Whether a request needs no tracing at all: no SDK, and no trace context in its ``_meta`` (with the SDK off,
    a ``_meta`` parent is still made current, so that the request's log lines carry its trace)."""
    if _state.tracer is not None:
        return False
    meta = message.params.get("_meta")
    return type(meta) is not dict or "traceparent" not in meta


def _start(
    message: Message, ctx: RequestContext, features: Features, exchange: Exchange | None
) -> tuple[str, dict[str, Any]]:
    """The span's first name and attributes."""
    method = message.method or ""
    attributes: dict[str, Any] = {"mcp.method.name": method, "jsonrpc.request.id": str(message.id)}
    if ctx.protocol_version:
        attributes["mcp.protocol.version"] = ctx.protocol_version
    if ctx.session is not None and ctx.session.id:
        attributes["mcp.session.id"] = ctx.session.id
    params = message.params
    name = params.get("name")
    target = None
    if method == "tools/call":
        attributes["gen_ai.operation.name"] = "execute_tool"
        if type(name) is str and features.tools.spec(name) is not None:
            target = attributes["gen_ai.tool.name"] = name
    elif method == "prompts/get" and type(name) is str and features.prompts.get_spec(name) is not None:
        target = attributes["gen_ai.prompt.name"] = name
    elif method in _RESOURCE_METHODS and type(uri := params.get("uri")) is str:
        attributes["mcp.resource.uri"] = uri
    attributes.update(exchange.attributes() if exchange is not None else _state.direct)
    return (f"{method} {target}" if target else method), attributes


def _finish(span: trace.Span, method: str, outcome: Outcome) -> None:
    """Name, attributes and status from the answer."""
    if outcome.method != method:
        span.update_name(outcome.method)  # a method this server does not know: "(unknown)", as in the metrics
    response = outcome.response
    error = response.get("error")
    if isinstance(error, dict):
        code = str(error.get("code"))
        span.set_attributes({"error.type": code, "rpc.response.status_code": code})
        span.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))))
        return
    result = response.get("result")
    if not isinstance(result, dict):
        return
    if method == "initialize" and isinstance(result.get("protocolVersion"), str):
        span.set_attribute("mcp.protocol.version", result["protocolVersion"])
    elif result.get("isError") is True:
        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR))


async def traced(work: Awaitable[Outcome], message: Message, ctx: RequestContext, features: Features) -> Outcome:
    """Await ``work``, the answer to ``message``, in its span (and under its ``_meta`` trace context)."""
    ambient = context.get_current()
    carrier = _meta_carrier(message)
    parent = propagate.extract(carrier, context=ambient) if carrier is not None else ambient
    tracer = _state.tracer
    exchange = _EXCHANGE.get()
    if tracer is None:  # no span of ours: the _meta parent is the request's span, for its log lines
        carried = trace.get_current_span(parent).get_span_context()
        if exchange is not None and parent is not ambient and carried.is_valid:
            exchange.span_context = carried
        token = context.attach(parent)
        try:
            return await work
        finally:
            context.detach(token)
    links = None
    if parent is not ambient:
        outer = trace.get_current_span(ambient).get_span_context()
        if outer.is_valid and outer != trace.get_current_span(parent).get_span_context():
            links = [Link(outer)]
    method = message.method or ""
    name, attributes = _start(message, ctx, features, exchange)
    span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes, links=links)
    if exchange is not None:
        exchange.span_context = span.get_span_context()
    token = context.attach(trace.set_span_in_context(span, parent))
    try:
        outcome = await work
    except BaseException as exc:  # cancelled (by the client, or the server stopping): no answer was given
        span.set_attribute(
            "error.type", "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__qualname__
        )
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    else:
        _finish(span, method, outcome)
        return outcome
    finally:
        context.detach(token)
        span.end()
