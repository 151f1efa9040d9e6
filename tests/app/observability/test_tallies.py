"""The lock-free metrics of every request print what prometheus-client's locked metrics print: the same names,
samples, labels and buckets, in the Prometheus text format and in OpenMetrics (only ``_created`` times differ)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from app.observability.tallies import LoopCounter, LoopGauge, LoopHistogram

BUCKETS = (0.005, 0.01, 0.025, 1, 30)


def count_the_same_things(registry: CollectorRegistry, counter: Any, histogram: Any, gauge: Any) -> None:
    requests = counter("http_requests", "HTTP requests answered.", ["method", "code"], registry=registry)
    duration = histogram("http_request_duration_seconds", "Time.", ["method"], buckets=BUCKETS, registry=registry)
    in_flight = gauge("http_requests_in_flight", "Now.", registry=registry)
    requests.labels(method="POST", code=200).inc()
    requests.labels(method="POST", code="200").inc(2)
    requests.labels(code="404", method="GET").inc()
    for seconds in (0.0, 0.001, 0.005, 0.0051, 0.5, 1, 31, 1e9):  # on a bound, between, past the last
        duration.labels(method="POST").observe(seconds)
    duration.labels(method="GET").observe(0.01)
    in_flight.inc()
    in_flight.inc()
    in_flight.dec()


def printed(write: Callable[[CollectorRegistry], bytes], counter: Any, histogram: Any, gauge: Any) -> str:
    registry = CollectorRegistry(auto_describe=True)
    count_the_same_things(registry, counter, histogram, gauge)
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 (time)", write(registry).decode())


@pytest.mark.parametrize("write", [generate_latest, generate_openmetrics], ids=["prometheus text", "openmetrics"])
def test_the_lock_free_metrics_print_what_prometheus_clients_metrics_print(
    write: Callable[[CollectorRegistry], bytes],
) -> None:
    locked = printed(write, Counter, Histogram, Gauge)
    assert 'http_requests_total{code="200",method="POST"} 3.0' in locked  # (the comparison compares something)
    assert printed(write, LoopCounter, LoopHistogram, LoopGauge) == locked


def test_a_counter_refuses_to_go_down_and_labels_it_was_not_made_with() -> None:
    counter = LoopCounter("things", "Things.", ["kind"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="only go up"):
        counter.labels(kind="a").inc(-1)
    with pytest.raises(ValueError, match="are not"):
        counter.labels(sort="a")
    histogram = LoopHistogram("seconds", "Time.", ["kind"], buckets=(1,), registry=CollectorRegistry())
    with pytest.raises(ValueError, match="are not"):
        histogram.labels()
