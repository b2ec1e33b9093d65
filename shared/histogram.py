"""A Prometheus histogram for one writer thread: an observation is a bisect and two additions, with no lock.

prometheus-client's ``Histogram.observe`` takes a lock twice (sum, then bucket) and walks the buckets in Python:
measured with ``benchmarks/engine_overhead.py``, a fifth of TRS's own CPU per task went there. The engine observes
every attempt from its event loop's thread only, so a child here keeps plain counts, and ``collect`` (called by
whichever thread serves a scrape) reads a copy of them. A scrape may see an observation's bucket without its sum;
the next scrape sees both.

The family it exposes is the same as a prometheus-client ``Histogram``'s: ``_bucket`` (cumulative, with ``+Inf``),
``_count`` and ``_sum`` series per label set.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client.core import REGISTRY, CollectorRegistry, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HistogramChild", "SingleWriterHistogram"]


class HistogramChild:
    """One label set's counts: one per bucket bound, and one past the last."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # A bucket holds values up to and including its bound, as in Prometheus.
        self.counts[bisect.bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class SingleWriterHistogram(Collector):
    """A labelled histogram whose ``labels(...).observe`` is called from one thread only."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(float(b) for b in buckets if b != math.inf)
        self._children: dict[tuple[str, ...], HistogramChild] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The child for one label set, created on first use."""
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes {len(self._labelnames)} label values, got {len(values)}")
        child = self._children.get(values)
        if child is None:
            child = self._children.setdefault(values, HistogramChild(self._bounds))
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), float(cumulative)))
            family.add_metric(list(values), buckets, total)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)


def _bound_text(bound: float) -> str:
    # The le values prometheus-client's own Histogram writes for bounds like these: "0.005", "1.0", "+Inf".
    return "+Inf" if bound == math.inf else repr(bound)
