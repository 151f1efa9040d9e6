"""Counters, histograms and a gauge counted without a lock, read as Prometheus metric families when scraped.

prometheus-client's metrics take a ``threading.Lock`` at every ``inc`` and ``observe`` (a histogram: two), so that
any thread may count. The metrics of every request are counted on the event loop's thread alone, where the lock
buys nothing: a request counted through them cost about a tenth of its CPU (seven metrics, eleven locked
increments). These keep plain numbers instead and hand prometheus-client families at collection, so the text a
scraper reads (names, ``_total``, ``_created``, ``_bucket``/``_count``/``_sum``, ``le`` labels) is what the locked
metrics print.

Only the event loop's thread may count on them. Collection may run on another thread (the Cloud Monitoring
exporter): it reads a copy of the children, and a count being added as it reads lands in the next collection.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["LoopCounter", "LoopGauge", "LoopHistogram"]

Child = TypeVar("Child")


class _Labelled(Generic[Child]):
    """A metric's name, help, label names and its children by label values, each made on first use by
    ``new_child``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], new_child: Callable[[], Child]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._wanted = frozenset(self._labelnames)
        self._new_child = new_child
        self._children: dict[tuple[str, ...], Child] = {}

    def labels(self, **labels: object) -> Child:
        """The child of these label values (made on first use)."""
        if labels.keys() != self._wanted:
            raise ValueError(f"{self._name}: labels {sorted(labels)} are not {sorted(self._wanted)}")
        key = tuple(str(labels[name]) for name in self._labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child


class CounterChild:
    """One labelled counter."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Count ``amount`` (not negative)."""
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class LoopCounter(_Labelled[CounterChild], Collector):
    """A labelled counter (``NAME_total``), as :class:`prometheus_client.Counter` prints it."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labelnames, CounterChild)
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in list(self._children.items()):
            family.add_metric(key, child.value, created=child.created)
        yield family


class HistogramChild:
    """One labelled histogram: a count per bucket (not cumulative: summed when collected) and the sum."""

    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count one observation of ``amount`` in the first bucket whose bound is at least it."""
        self.sum += amount
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1


class LoopHistogram(_Labelled[HistogramChild], Collector):
    """A labelled histogram, as :class:`prometheus_client.Histogram` prints it (``+Inf`` added to ``buckets``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(bound) for bound in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, lambda: HistogramChild(self._bounds))
        self._les = tuple(str(floatToGoString(bound)) for bound in self._bounds)  # type: ignore[no-untyped-call]
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative: list[tuple[str, float]] = []
            running = 0
            for le, count in zip(self._les, counts, strict=True):
                running += count
                cumulative.append((le, float(running)))
            family.add_metric(key, cumulative, total)
            family.samples.append(
                Sample(f"{self._name}_created", dict(zip(self._labelnames, key, strict=True)), child.created)
            )
        yield family


class LoopGauge(Collector):
    """A gauge without labels that goes up and down (``inc``/``dec``)."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation, value=self.value)
