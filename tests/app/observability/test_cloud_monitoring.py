"""The Cloud Monitoring exporter against a local server of the real google.monitoring.v3.MetricService protocol,
fed by a real prometheus_client registry: what it writes, how it batches and paces, and how it lives through
refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from google.api_core.exceptions import AlreadyExists
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from structlog.testing import capture_logs

from app.observability.cloud_monitoring import CloudMonitoringExporter, metric_descriptors
from tests.gcp import EMPTY, channel, serve, unary

PROJECT = "demo-project"
T0 = 1_700_000_000.0
RESOURCE = {"location": "europe-west1", "namespace": "mcp", "job": "erlmcp", "task_id": "erlmcp-7d9f-abcde"}
CUMULATIVE = 3  # google.api.MetricDescriptor.MetricKind
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def prefixed(name: str) -> str:
    return f"custom.googleapis.com/erlmcp/{name}"


def key(series: Any) -> tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """What makes a time series: metric type and labels, resource labels."""
    return (series.metric.type, tuple(sorted(series.metric.labels.items())),
            tuple(sorted(series.resource.labels.items())))  # fmt: skip


@dataclass
class FakeMetricService:
    """google.monitoring.v3.MetricService with the checks Cloud Monitoring makes on what our exporter sends."""

    requests: list[Any] = field(default_factory=list)
    descriptor_calls: list[Any] = field(default_factory=list)
    descriptors: dict[str, Any] = field(default_factory=dict)
    refuse: list[tuple[Any, str]] = field(default_factory=list)  # (grpc.StatusCode, message) for the next writes
    last_end: dict[Any, datetime] = field(default_factory=dict)
    port: int = 0  # where the fixture serves it

    def create_time_series(self, request: Any, context: Any) -> None:
        if self.refuse:
            context.abort(*self.refuse.pop(0))
        problem = self._problem(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        for series in request.time_series:
            self.last_end[key(series)] = series.points[0].interval.end_time
        self.requests.append(request)

    def _problem(self, request: Any) -> str | None:
        if request.name != f"projects/{PROJECT}":
            return "name must be projects/{project}"
        if not 1 <= len(request.time_series) <= 200:
            return "a request takes 1 to 200 time series"
        seen = set()
        for series in request.time_series:
            descriptor = self.descriptors.get(series.metric.type)
            if descriptor is None:
                return f"no metric descriptor {series.metric.type}"
            if (series.metric_kind, series.value_type) != (descriptor.metric_kind, descriptor.value_type):
                return f"{series.metric.type}: kind or value type differs from its descriptor"
            if key(series) in seen or len(series.points) != 1:
                return "each time series once per request, with exactly one point"
            seen.add(key(series))
            interval = series.points[0].interval
            if series.metric_kind == CUMULATIVE and not interval.start_time < interval.end_time:
                return "a cumulative point needs a start time before its end time"
            previous = self.last_end.get(key(series))
            if previous is not None and interval.end_time - previous < timedelta(seconds=5):
                return "points were written more frequently than the maximum sampling period"
        return None

    def create_metric_descriptor(self, request: Any, context: Any) -> Any:
        self.descriptor_calls.append(request)
        descriptor = request.metric_descriptor
        if descriptor.type in self.descriptors:
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{descriptor.type} exists")
        self.descriptors[descriptor.type] = descriptor
        return descriptor

    def series(self, request: int = -1) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
        """One request's time series by (metric type, metric labels)."""
        return {(s.metric.type, tuple(sorted(s.metric.labels.items()))): s for s in self.requests[request].time_series}


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[tuple[FakeMetricService, monitoring_v3.MetricServiceClient]]:
    service = FakeMetricService()
    server, port = serve({"google.monitoring.v3.MetricService": {
        "CreateTimeSeries": unary(service.create_time_series, monitoring_v3.CreateTimeSeriesRequest, EMPTY),
        "CreateMetricDescriptor": unary(service.create_metric_descriptor,
                                        monitoring_v3.CreateMetricDescriptorRequest, RawMessage),
    }})  # fmt: skip
    service.port = port
    to_server = channel(port)
    yield service, monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=to_server))
    to_server.close()
    server.stop(None)


class RawMessage:
    """Serializer of a plain protobuf message (google.api.MetricDescriptor is not a proto-plus class)."""

    @staticmethod
    def serialize(message: Any) -> bytes:
        return bytes(message.SerializeToString())


@dataclass
class Server:
    """The registry families the server's Metrics class keeps, for the exporter to read."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter("http_requests", "answered", ["method", "code"], registry=self.registry)
        self.latency = Histogram("http_request_duration_seconds", "time", ["method"], buckets=BUCKETS,
                                 registry=self.registry)  # fmt: skip
        self.connections = Gauge("mcp_connections_active", "open", ["transport"], registry=self.registry)
        self.tasks = Gauge("erlmcp_asyncio_tasks", "tasks", registry=self.registry)
        self.workers = Gauge("erlmcp_tool_workers", "workers", registry=self.registry)
        ProcessCollector(registry=self.registry)


def exporter(fake: Any, registry: CollectorRegistry, clock: Clock, **kwargs: Any) -> CloudMonitoringExporter:
    return CloudMonitoringExporter(registry, project_id=PROJECT, resource_labels=RESOURCE, client=fake[1],
                                   clock=clock, **kwargs)  # fmt: skip


def stamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def test_the_five_metric_descriptors_are_created_once_with_kinds_units_and_descriptions(fake) -> None:
    service, _ = fake
    clock = Clock()
    export = exporter(fake, Server().registry, clock)
    clock.now += 60
    export.export_once()
    clock.now += 60
    export.export_once()
    made = {call.metric_descriptor.type: call.metric_descriptor for call in service.descriptor_calls}
    assert len(service.descriptor_calls) == 5
    assert {t: (d.metric_kind, d.value_type, d.unit) for t, d in made.items()} == {
        prefixed("http/latency"): (3, 5, "s"),  # CUMULATIVE DISTRIBUTION
        prefixed("http/requests"): (3, 2, "1"),  # CUMULATIVE INT64
        prefixed("connections/active"): (1, 2, "1"),  # GAUGE INT64
        prefixed("erlang/processes"): (1, 2, "1"),
        prefixed("memory/usage"): (1, 2, "By"),
    }
    assert all(d.description and d.display_name for d in made.values())
    assert [label.key for label in made[prefixed("http/requests")].labels] == ["code"]
    assert "asyncio tasks plus tool worker processes" in made[prefixed("erlang/processes")].description


def test_descriptors_that_already_exist_are_fine(fake) -> None:
    service, client = fake
    for descriptor in metric_descriptors():
        client.create_metric_descriptor(name=f"projects/{PROJECT}", metric_descriptor=descriptor)
    with pytest.raises(AlreadyExists):
        client.create_metric_descriptor(name=f"projects/{PROJECT}", metric_descriptor=metric_descriptors()[0])
    clock = Clock()
    export = exporter(fake, Server().registry, clock)
    clock.now += 60
    assert export.export_once() == 3  # connections, processes, memory: nothing observed yet
    assert len(service.descriptor_calls) == 11


def test_the_latency_histogram_is_one_distribution_over_all_methods_with_per_bucket_counts(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    for seconds in (0.003, 0.004, 0.02, 0.3):
        server.latency.labels(method="POST").observe(seconds)
    for seconds in (0.02, 1.5, 60.0):
        server.latency.labels(method="GET").observe(seconds)
    clock.now += 60
    export.export_once()

    series = service.series()[(prefixed("http/latency"), ())]
    assert (series.metric_kind, series.value_type) == (3, 5)
    point = series.points[0]
    assert point.interval.start_time == stamp(T0)
    assert point.interval.end_time == stamp(T0 + 60)
    distribution = point.value.distribution_value
    assert list(distribution.bucket_options.explicit_buckets.bounds) == list(BUCKETS)
    # Buckets: underflow (< 0.005), one between each pair of bounds, overflow (>= 30).
    assert list(distribution.bucket_counts) == [2, 0, 2, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    assert sum(distribution.bucket_counts) == distribution.count == 7
    assert distribution.mean == pytest.approx((0.003 + 0.004 + 0.02 + 0.3 + 0.02 + 1.5 + 60.0) / 7)


def test_requests_are_one_series_per_status_code_summed_over_methods(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    server.requests.labels(method="POST", code="200").inc(5)
    server.requests.labels(method="GET", code="200").inc(2)
    server.requests.labels(method="POST", code="503").inc()
    clock.now += 60
    export.export_once()

    written = service.series()
    counts = {labels: s.points[0].value.int64_value for (kind, labels), s in written.items()
              if kind == prefixed("http/requests")}  # fmt: skip
    assert counts == {(("code", "200"),): 7, (("code", "503"),): 1}
    series = written[(prefixed("http/requests"), (("code", "200"),))]
    assert (series.metric_kind, series.value_type) == (3, 2)
    assert series.points[0].interval.start_time == stamp(T0)


def test_gauges_are_summed_over_their_labels_and_processes_count_tasks_plus_workers(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    server.connections.labels(transport="websocket").set(3)
    server.connections.labels(transport="sse").set(4)
    server.tasks.set(40)
    server.workers.set(2)
    clock.now += 60
    export.export_once()

    written = service.series()
    value = {kind: s.points[0].value.int64_value for (kind, _), s in written.items()}
    assert value[prefixed("connections/active")] == 7
    assert value[prefixed("erlang/processes")] == 42
    assert value[prefixed("memory/usage")] > 1_000_000  # this test process's resident memory
    gauge = written[(prefixed("connections/active"), ())]
    assert gauge.metric_kind == 1
    assert "start_time" not in type(gauge.points[0].interval).to_dict(gauge.points[0].interval)


def test_missing_gauge_families_count_zero_and_memory_falls_back_to_statm(fake) -> None:
    service, _ = fake
    registry, clock = CollectorRegistry(), Clock()  # no families at all
    export = exporter(fake, registry, clock)
    clock.now += 60
    assert export.export_once() == 3  # no latency, no requests yet: connections, processes, memory

    value = {kind: s.points[0].value.int64_value for (kind, _), s in service.series().items()}
    assert value[prefixed("connections/active")] == 0
    assert value[prefixed("erlang/processes")] == 0
    assert value[prefixed("memory/usage")] > 1_000_000


def test_every_series_is_on_the_generic_task_resource_given(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    server.requests.labels(method="POST", code="200").inc()
    clock.now += 60
    export.export_once()

    resources = {(s.resource.type, tuple(sorted(s.resource.labels.items()))) for s in service.requests[0].time_series}
    assert resources == {("generic_task", tuple(sorted({**RESOURCE, "project_id": PROJECT}.items())))}


def test_more_than_200_series_are_written_in_requests_of_at_most_200(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    for code in range(250):
        server.requests.labels(method="POST", code=str(100 + code)).inc()
    server.latency.labels(method="POST").observe(0.1)
    clock.now += 60
    assert export.export_once() == 254  # 250 codes + latency, connections, processes, memory

    assert [len(r.time_series) for r in service.requests] == [200, 54]
    codes = {s.metric.labels["code"] for r in service.requests for s in r.time_series if s.metric.labels}
    assert len(codes) == 250


def test_a_series_is_never_written_again_within_10_seconds(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    clock.now += 60
    assert export.export_once() == 3
    clock.now += 9.9
    assert export.export_once() == 0
    assert len(service.requests) == 1
    clock.now += 0.1
    assert export.export_once() == 3
    assert len(service.requests) == 2


def test_an_interval_under_10_seconds_or_a_missing_resource_label_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        CloudMonitoringExporter(CollectorRegistry(), project_id=PROJECT, resource_labels=RESOURCE, interval_seconds=9)
    with pytest.raises(ValueError, match="task_id"):
        CloudMonitoringExporter(CollectorRegistry(), project_id=PROJECT,
                                resource_labels={k: v for k, v in RESOURCE.items() if k != "task_id"})  # fmt: skip


def test_a_refused_write_is_logged_and_the_next_export_writes_the_points(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    export = exporter(fake, server.registry, clock)
    server.requests.labels(method="POST", code="200").inc()
    service.refuse.append((grpc.StatusCode.INVALID_ARGUMENT, "One or more TimeSeries could not be written"))
    clock.now += 60
    with capture_logs() as logs:
        assert export.export_once() == 0
    assert logs == [{"event": "cloud monitoring rejected time series", "log_level": "warning", "series": 4,
                     "error": "One or more TimeSeries could not be written", "status": "INVALID_ARGUMENT"}]  # fmt: skip
    clock.now += 60
    assert export.export_once() == 4
    assert len(service.requests) == 1


def test_run_exports_every_interval_lives_through_errors_and_exports_once_more_when_cancelled(fake) -> None:
    service, _ = fake
    server, clock = Server(), Clock()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes only when the exporter waits
        waits.append(seconds)
        clock.now += seconds
        if len(waits) == 4:
            await asyncio.Event().wait()  # the fourth wait lasts until the task is cancelled

    export = exporter(fake, server.registry, clock, interval_seconds=30, sleep=sleep)
    service.refuse.append((grpc.StatusCode.UNAVAILABLE, "try again"))
    server.requests.labels(method="POST", code="200").inc()

    async def main() -> None:
        task = asyncio.create_task(export.run())
        while len(waits) < 4:
            await asyncio.sleep(0)
        server.requests.labels(method="POST", code="200").inc()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with capture_logs() as logs:
        asyncio.run(main())
    assert waits == [30, 30, 30, 30]
    assert [entry["status"] for entry in logs] == ["UNAVAILABLE"]
    ends = [r.time_series[0].points[0].interval.end_time for r in service.requests]
    assert ends == [stamp(T0 + 60), stamp(T0 + 90), stamp(T0 + 120)]  # the first write was refused; the last is
    # the one on cancellation, with the request counted just before it
    last = service.series()[(prefixed("http/requests"), (("code", "200"),))]
    assert last.points[0].value.int64_value == 2


def test_an_unexpected_error_in_the_loop_is_logged_and_the_loop_goes_on(fake) -> None:
    service, _ = fake
    clock = Clock()
    waits: list[float] = []

    class Broken(CollectorRegistry):
        calls = 0

        def collect(self) -> Iterator[Any]:
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("a collector broke")
            yield from super().collect()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds
        if len(waits) == 3:
            raise asyncio.CancelledError

    export = exporter(fake, Broken(), clock, sleep=sleep)
    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        asyncio.run(export.run())
    assert [(e["event"], e["log_level"]) for e in logs] == [("cloud monitoring export failed", "error")]
    assert len(service.requests) == 2  # the second export, and the one on cancellation


@pytest.mark.slow
def test_a_real_server_with_a_project_writes_the_five_metrics_and_once_more_when_it_stops(
    fake: Any, tmp_path: Any
) -> None:
    import signal

    import httpx

    from tests.conftest import start_server

    service, _ = fake
    port = service.port
    server = start_server(tmp_path, ["--no-auth"], env={
        "ERLMCP_CLOUD_MONITORING_PROJECT": PROJECT, "ERLMCP_CLOUD_MONITORING_ENDPOINT": f"127.0.0.1:{port}",
        "ERLMCP_CLOUD_MONITORING_LOCATION": "us-central1", "ERLMCP_CLOUD_MONITORING_NAMESPACE": "mcp",
        "ERLMCP_CLOUD_MONITORING_TASK_ID": "mcp-0"})  # fmt: skip
    try:
        for _ in range(3):
            httpx.get(f"{server.url}/livez")
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
    finally:
        server.stop()
    assert server.process.returncode == 0, server.log.read_text()
    assert service.requests, "nothing was exported"
    written = {series.metric.type for request in service.requests for series in request.time_series}
    assert written == {prefixed(name) for name in ("http/latency", "http/requests", "connections/active",
                                                   "erlang/processes", "memory/usage")}  # fmt: skip
    resource = service.requests[-1].time_series[0].resource
    assert resource.type == "generic_task"
    assert dict(resource.labels) == {"project_id": PROJECT, "location": "us-central1", "namespace": "mcp",
                                     "job": "erlmcp", "task_id": "mcp-0"}  # fmt: skip
    requests = [s for s in service.requests[-1].time_series if s.metric.type == prefixed("http/requests")]
    assert sum(s.points[0].value.int64_value for s in requests) >= 3


def test_a_project_without_credentials_stops_the_start_with_the_reason(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("ERLMCP_")}
    env |= {"ERLMCP_CLOUD_MONITORING_PROJECT": PROJECT, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")}
    done = subprocess.run([sys.executable, "-m", "app", "--no-auth", "--port", "0", "--metrics-port", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "Cloud Monitoring export cannot start" in done.stderr
