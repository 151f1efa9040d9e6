"""The seed's five custom metrics, read from the server's Prometheus registry and written to Cloud Monitoring.

Optional: the entry point starts it when a Google Cloud project is configured. Every ``interval_seconds`` (60 by
default, never under 10) the registry is read by family name and one point per time series is written with
``CreateTimeSeries``, at most 200 series per request, each series at most once in 10 s (Cloud Monitoring refuses
points of one series closer than 5 s apart). The five metric descriptors are created first, once.

==========================================  ==============================  =======================================
``custom.googleapis.com/erlmcp/``           kind, type, unit                read from
==========================================  ==============================  =======================================
``http/latency``                            CUMULATIVE DISTRIBUTION ``s``   ``http_request_duration_seconds``
``http/requests``                           CUMULATIVE INT64, label code    ``http_requests_total``
``connections/active``                      GAUGE INT64                     ``mcp_connections_active``
``erlang/processes``                        GAUGE INT64                     ``erlmcp_asyncio_tasks`` + ``_tool_workers``
``memory/usage``                            GAUGE INT64 ``By``              ``process_resident_memory_bytes``
==========================================  ==============================  =======================================

Every label set of a family is summed (``http/requests`` keeps one series per status code). The histogram's
``le`` buckets become the distribution's explicit bounds, their cumulative counts per-bucket counts (Prometheus
counts ``<= le``, Cloud Monitoring ``< bound``: a value exactly on a bound lands one bucket lower). Cumulative
points start when the exporter was made. ``erlang/processes`` keeps the seed's name: in this server it counts live
asyncio tasks plus tool worker processes. A missing gauge family counts 0; memory falls back to
``/proc/self/statm``. The series are on the monitored resource ``generic_task`` (project_id, location, namespace,
job, task_id).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from google.api_core.exceptions import AlreadyExists, GoogleAPICallError
from google.cloud import monitoring_v3
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

__all__ = [
    "MAX_SERIES_PER_REQUEST",
    "METRIC_PREFIX",
    "MIN_INTERVAL_SECONDS",
    "RESOURCE_LABELS",
    "CloudMonitoringExporter",
    "metric_descriptors",
]

log = structlog.get_logger(__name__)

METRIC_PREFIX = "custom.googleapis.com/erlmcp/"
MIN_INTERVAL_SECONDS = 10.0
MAX_SERIES_PER_REQUEST = 200
RESOURCE_TYPE = "generic_task"
RESOURCE_LABELS = ("project_id", "location", "namespace", "job", "task_id")
_CALL_TIMEOUT = 10.0  # seconds one API call may take; the next interval tries again


@dataclass(frozen=True)
class _Kind:
    """One custom metric: its descriptor fields."""

    name: str  # after METRIC_PREFIX
    kind: str
    value_type: str
    unit: str
    display_name: str
    description: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def type(self) -> str:
        return METRIC_PREFIX + self.name


LATENCY = _Kind(
    "http/latency",
    "CUMULATIVE",
    "DISTRIBUTION",
    "s",
    "erlmcp HTTP latency",
    "Time to answer an HTTP request (every method, every status), in seconds.",
)
REQUESTS = _Kind(
    "http/requests",
    "CUMULATIVE",
    "INT64",
    "1",
    "erlmcp HTTP requests",
    "HTTP requests answered, by status code.",
    (("code", "HTTP status code of the answer, e.g. 200 or 503."),),
)
CONNECTIONS = _Kind(
    "connections/active",
    "GAUGE",
    "INT64",
    "1",
    "erlmcp active connections",
    "Long-lived connections open now (WebSocket, TCP, HTTP+SSE, stdio, streamable-HTTP streams).",
)
PROCESSES = _Kind(
    "erlang/processes",
    "GAUGE",
    "INT64",
    "1",
    "erlmcp processes",
    "The seed's Erlang process count; in this server: live asyncio tasks plus tool worker processes.",
)
MEMORY = _Kind(
    "memory/usage",
    "GAUGE",
    "INT64",
    "By",
    "erlmcp memory usage",
    "Resident memory of the server process, in bytes (tool worker processes not included).",
)
_KINDS = (LATENCY, REQUESTS, CONNECTIONS, PROCESSES, MEMORY)


def metric_descriptors() -> list[dict[str, Any]]:
    """The five ``google.api.MetricDescriptor`` s, as the dicts given to ``create_metric_descriptor``."""
    return [
        {
            "type": k.type,
            "metric_kind": k.kind,
            "value_type": k.value_type,
            "unit": k.unit,
            "display_name": k.display_name,
            "description": k.description,
            "labels": [{"key": key, "value_type": "STRING", "description": text} for key, text in k.labels],
        }
        for k in _KINDS
    ]


@dataclass(frozen=True)
class _Histogram:
    """A distribution: explicit bounds, per-bucket counts (underflow first, overflow last), count and sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class _Sample:
    kind: _Kind
    labels: tuple[tuple[str, str], ...]
    value: int | _Histogram

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.kind.name, self.labels


def _histogram(family: Metric) -> _Histogram | None:
    """Every label set of a Prometheus histogram summed; None without a single bucket."""
    cumulative: dict[float, float] = {}
    count = total = 0.0
    for sample in family.samples:
        if sample.name == f"{family.name}_bucket":
            bound = float(sample.labels["le"])
            cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
        elif sample.name == f"{family.name}_count":
            count += sample.value
        elif sample.name == f"{family.name}_sum":
            total += sample.value
    if not cumulative:
        return None
    bounds = tuple(sorted(b for b in cumulative if math.isfinite(b)))
    running = [cumulative[b] for b in bounds] + [cumulative.get(math.inf, count)]
    counts = tuple(round(now - before) for before, now in zip([0.0, *running], running, strict=False))
    return _Histogram(bounds, counts, round(count), total)


def _sum(families: Mapping[str, Metric], name: str) -> float:
    """The sum of a family's samples of its own name (a gauge's every label set); 0 when it is missing."""
    family = families.get(name)
    return sum(s.value for s in family.samples if s.name == name) if family is not None else 0.0


def _resident_bytes() -> int | None:
    """Resident memory from /proc/self/statm (Linux), when ProcessCollector is not registered."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _timestamp(seconds: float) -> dict[str, int]:
    whole = math.floor(seconds)
    return {"seconds": whole, "nanos": min(round((seconds - whole) * 1e9), 999_999_999)}


class CloudMonitoringExporter:
    """Writes the five custom metrics of ``registry`` to project ``project_id`` every ``interval_seconds``.

    ``resource_labels`` are the ``generic_task`` labels (location, namespace, job, task_id; project_id defaults to
    ``project_id``). ``client`` defaults to a ``MetricServiceClient`` with Application Default Credentials, made on
    the first export. ``clock`` gives the points' times, ``sleep`` waits between exports. Raises
    :class:`ValueError` for an interval under 10 s or a missing resource label.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        project_id: str,
        resource_labels: Mapping[str, str],
        interval_seconds: float = 60.0,
        client: monitoring_v3.MetricServiceClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not interval_seconds >= MIN_INTERVAL_SECONDS:
            raise ValueError(f"interval_seconds must be at least {MIN_INTERVAL_SECONDS:g}, not {interval_seconds}")
        if not project_id:
            raise ValueError("project_id is required")
        resource = {"project_id": project_id, **resource_labels}
        missing = [key for key in RESOURCE_LABELS if not resource.get(key)]
        if missing:
            raise ValueError(f"{RESOURCE_TYPE} needs the resource labels {', '.join(missing)}")
        self._registry = registry
        self._project = f"projects/{project_id}"
        self._resource = {key: resource[key] for key in RESOURCE_LABELS}
        self._interval = float(interval_seconds)
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._described: set[str] = set()
        self._written: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()  # one write at a time: the loop's and a final one may overlap

    def export_once(self) -> int:
        """Read the registry and write one point per series; returns how many series were written.

        API errors are logged, not raised; the series they concern are written by a later export. Series written
        less than 10 s ago are left out, as are cumulative ones in the very instant the exporter was made.
        """
        return self._write(self._read())

    async def run(self) -> None:
        """Export every interval until cancelled, then once more; an error is logged and the loop goes on.

        The registry is read on the event loop (its callback gauges look at the loop's tasks), the API is called
        in a worker thread.
        """
        try:
            while True:
                await self._sleep(self._interval)
                await self._export()
        except asyncio.CancelledError:
            await self._export()
            raise

    async def _export(self) -> None:
        try:
            samples = self._read()
            await asyncio.to_thread(self._write, samples)
        except Exception:  # never let the exporter take the server down
            log.exception("cloud monitoring export failed")

    def _read(self) -> list[_Sample]:
        families = {family.name: family for family in self._registry.collect()}
        samples: list[_Sample] = []
        latency = families.get("http_request_duration_seconds")
        histogram = _histogram(latency) if latency is not None else None
        if histogram is not None:  # none before the first request: its buckets are not known yet
            samples.append(_Sample(LATENCY, (), histogram))
        codes: dict[str, float] = {}
        if (requests := families.get("http_requests")) is not None:
            for sample in requests.samples:
                if sample.name == "http_requests_total":
                    code = sample.labels.get("code", "")
                    codes[code] = codes.get(code, 0.0) + sample.value
        samples.extend(_Sample(REQUESTS, (("code", code),), round(n)) for code, n in sorted(codes.items()))
        samples.append(_Sample(CONNECTIONS, (), round(_sum(families, "mcp_connections_active"))))
        tasks = _sum(families, "erlmcp_asyncio_tasks") + _sum(families, "erlmcp_tool_workers")
        samples.append(_Sample(PROCESSES, (), round(tasks)))
        resident = families.get("process_resident_memory_bytes")
        memory = round(_sum(families, resident.name)) if resident is not None else _resident_bytes()
        if memory is not None:
            samples.append(_Sample(MEMORY, (), memory))
        return samples

    def _write(self, samples: Sequence[_Sample]) -> int:
        with self._lock:
            client = self._client = self._client or monitoring_v3.MetricServiceClient()
            if not self._describe(client):
                return 0
            now = self._clock()
            due = [
                s
                for s in samples
                if now - self._written.get(s.key, -math.inf) >= MIN_INTERVAL_SECONDS
                and (s.kind.kind != "CUMULATIVE" or now > self._started)
            ]
            written = 0
            for start in range(0, len(due), MAX_SERIES_PER_REQUEST):
                batch = due[start : start + MAX_SERIES_PER_REQUEST]
                try:
                    client.create_time_series(
                        name=self._project, time_series=[self._series(s, now) for s in batch], timeout=_CALL_TIMEOUT
                    )
                except GoogleAPICallError as exc:
                    log.warning(
                        "cloud monitoring rejected time series",
                        series=len(batch),
                        error=exc.message,
                        status=getattr(exc.grpc_status_code, "name", None),
                    )
                    continue
                for sample in batch:
                    self._written[sample.key] = now
                written += len(batch)
            return written

    def _describe(self, client: monitoring_v3.MetricServiceClient) -> bool:
        """Create the descriptors not created yet; False if one could not be (the export waits for them)."""
        for descriptor in metric_descriptors():
            if descriptor["type"] in self._described:
                continue
            try:
                client.create_metric_descriptor(name=self._project, metric_descriptor=descriptor, timeout=_CALL_TIMEOUT)
            except AlreadyExists:
                pass
            except GoogleAPICallError as exc:
                log.warning(
                    "cloud monitoring metric descriptor not created",
                    metric=descriptor["type"],
                    error=exc.message,
                    status=getattr(exc.grpc_status_code, "name", None),
                )
                return False
            self._described.add(descriptor["type"])
        return True

    def _series(self, sample: _Sample, now: float) -> monitoring_v3.TimeSeries:
        interval = {"end_time": _timestamp(now)}
        if sample.kind.kind == "CUMULATIVE":
            interval["start_time"] = _timestamp(self._started)
        value: dict[str, Any]
        if isinstance(sample.value, _Histogram):
            h = sample.value
            value = {
                "distribution_value": {
                    "count": h.count,
                    "mean": h.total / h.count if h.count else 0.0,
                    "sum_of_squared_deviation": 0.0,  # Prometheus keeps no squares; the API takes 0
                    "bucket_options": {"explicit_buckets": {"bounds": list(h.bounds)}},
                    "bucket_counts": list(h.counts),
                }
            }
        else:
            value = {"int64_value": sample.value}
        return monitoring_v3.TimeSeries(
            metric={"type": sample.kind.type, "labels": dict(sample.labels)},
            resource={"type": RESOURCE_TYPE, "labels": self._resource},
            metric_kind=sample.kind.kind,
            value_type=sample.kind.value_type,
            points=[{"interval": interval, "value": value}],
        )
