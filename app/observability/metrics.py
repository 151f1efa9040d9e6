"""Prometheus metrics, kept in the server's own registry and served on their own listener."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from app.observability.sink import dropped_lines
from app.observability.tallies import CounterChild, HistogramChild, LoopCounter, LoopGauge, LoopHistogram

__all__ = ["Metrics"]


class _DroppedLogLines(Collector):
    """``erlmcp_log_lines_dropped_total``: the lines the process's log sink lost (a full buffer, a reader gone),
    read when scraped (the sink counts in a plain int, off the request path)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "erlmcp_log_lines_dropped",
            "Log lines dropped because the log's buffer was full (the log could not keep up), or not written "
            "because the log's reader went away.",
            value=dropped_lines(),
        )


class Metrics:
    """The server's metrics. One instance per server, so tests and servers never share counters."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        build = Info(
            "erlmcp_build",
            "Version of the running erlmcp server, and which replica this is (host/pid).",
            registry=self.registry,
        )
        # The replica: a scraper behind a Service (the chart's tester) tells the Pods apart by it.
        build.info({"version": version, "replica": f"{socket.gethostname()}/{os.getpid()}"})
        # Counted at every request, on the event loop's thread: without a lock (see app.observability.tallies).
        self.http_requests = LoopCounter(
            "http_requests",
            "HTTP requests answered, by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.http_request_duration = LoopHistogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method.",
            ["method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.http_requests_in_flight = LoopGauge(
            "http_requests_in_flight", "HTTP requests being answered now.", registry=self.registry
        )
        self.mcp_requests = LoopCounter(
            "mcp_requests",
            "MCP messages handled, by JSON-RPC method and outcome (ok or error).",
            ["method", "outcome"],
            registry=self.registry,
        )
        self.mcp_tool_calls = LoopCounter(
            "mcp_tool_calls",
            "tools/call requests, by tool and outcome (ok, error, invalid_arguments, timeout).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.mcp_cancellations = Counter(
            "mcp_requests_cancelled",
            "Requests stopped because the client cancelled them, by transport.",
            ["transport"],
            registry=self.registry,
        )
        self.mcp_request_duration = LoopHistogram(
            "mcp_request_duration_seconds",
            "Time to answer an MCP request, by JSON-RPC method.",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.mcp_tool_duration = LoopHistogram(
            "mcp_tool_duration_seconds",
            "Time a tools/call took, by tool.",
            ["tool"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.sessions_active = Gauge(
            "mcp_sessions_active", "MCP sessions this server holds (handshake-era revisions).", registry=self.registry
        )
        self.connections_active = Gauge(
            "mcp_connections_active",
            "Long-lived connections open now, by transport (WebSocket, TCP, HTTP+SSE, stdio, streamable-HTTP streams).",
            ["transport"],
            registry=self.registry,
        )
        self.asyncio_tasks = Gauge("erlmcp_asyncio_tasks", "Live asyncio tasks in the server.", registry=self.registry)
        self.tool_workers = Gauge(
            "erlmcp_tool_workers", "Live worker processes of isolation: process tools.", registry=self.registry
        )
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_DroppedLogLines())
        self._outcomes: dict[
            tuple[str, str, str | None],
            tuple[CounterChild, HistogramChild, CounterChild | None, HistogramChild | None],
        ] = {}
        self.rate_limited = Counter(
            "mcp_rate_limited", "Requests refused with 429 because a client was over its rate.", registry=self.registry
        )
        self.requests_shed = Counter(
            "mcp_requests_shed",
            "POST /mcp requests answered 503 at once because the server had its bound of requests in progress.",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "mcp_auth_failures", "Requests refused for missing or wrong credentials.", registry=self.registry
        )
        self.connections_refused = Counter(
            "erlmcp_connections_refused",
            "Long-lived connections refused or cut by the server, by transport and reason: per_principal_cap (the "
            "principal holds its cap of open connections), first_message_deadline, header_deadline, body_deadline, "
            "write_stall (a client too slow to send or to read), credential_revoked, credential_expired.",
            ["transport", "reason"],
            registry=self.registry,
        )

    def connection_refused(self, transport: str, reason: str) -> None:
        """Count one connection refused or cut (``reason`` from the fixed set in the metric's help)."""
        self.connections_refused.labels(transport=transport, reason=reason).inc()

    def count_outcome(self, method: str, outcome: str, tool: str | None, seconds: float = 0.0) -> None:
        """Count one answered MCP request and its duration (and the tool call, for tools/call); labelled children
        are cached. ``method`` and ``tool`` come from bounded sets: known methods and catalogue tools only."""
        key = (method, outcome, tool if method == "tools/call" else None)
        children = self._outcomes.get(key)
        if children is None:
            requests = self.mcp_requests.labels(method=method, outcome=outcome)
            duration = self.mcp_request_duration.labels(method=method)
            calls = self.mcp_tool_calls.labels(tool=key[2], outcome=outcome) if key[2] else None
            tool_duration = self.mcp_tool_duration.labels(tool=key[2]) if key[2] else None
            children = (requests, duration, calls, tool_duration)
            if len(self._outcomes) < 10_000:  # labels come from bounded sets; stay bounded all the same
                self._outcomes[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if children[2] is not None and children[3] is not None:
            children[2].inc()
            children[3].observe(seconds)

    def watch(self, *, sessions: Callable[[], int], tasks: Callable[[], int], workers: Callable[[], int]) -> None:
        """Gauges read when scraped: sessions held, live asyncio tasks, tool worker processes."""
        self.sessions_active.set_function(sessions)
        self.asyncio_tasks.set_function(tasks)
        self.tool_workers.set_function(workers)
