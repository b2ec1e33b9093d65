"""The engine's lock-free histogram exposes what prometheus-client's own Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from shared.histogram import SingleWriterHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Below the first bound, on a bound (it counts as inside), between bounds, past the last.
AMOUNTS = (0.001, 0.005, 0.0051, 0.3, 1.0, 59.9, 60.0, 61.0, 1000.0)


def _exposition(registry: CollectorRegistry) -> set[str]:
    # prometheus-client adds a _created gauge per child, which this histogram leaves out.
    return {line for line in generate_latest(registry).decode().splitlines() if "_created" not in line}


def test_the_exposition_matches_prometheus_clients_histogram() -> None:
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = SingleWriterHistogram(
        "trs_x_seconds", "A duration.", ["method", "status_class"], buckets=BUCKETS, registry=ours_registry
    )
    theirs = Histogram(
        "trs_x_seconds", "A duration.", ["method", "status_class"], buckets=BUCKETS, registry=theirs_registry
    )
    for labels in (("GET", "2xx"), ("POST", "error")):
        for amount in AMOUNTS:
            ours.labels(*labels).observe(amount)
            theirs.labels(*labels).observe(amount)

    assert _exposition(ours_registry) == _exposition(theirs_registry)
    assert 'trs_x_seconds_bucket{le="0.005",method="GET",status_class="2xx"} 2.0' in _exposition(ours_registry)


def test_a_child_is_made_once_per_label_set() -> None:
    histogram = SingleWriterHistogram("trs_y_seconds", "A duration.", ["method"], buckets=BUCKETS, registry=None)

    assert histogram.labels("GET") is histogram.labels("GET")
    assert histogram.labels("GET") is not histogram.labels("PUT")


def test_a_wrong_number_of_label_values_is_refused() -> None:
    histogram = SingleWriterHistogram(
        "trs_z_seconds", "A duration.", ["method", "status_class"], buckets=BUCKETS, registry=None
    )

    with pytest.raises(ValueError, match="trs_z_seconds takes 2 label values, got 1"):
        histogram.labels("GET")
