"""The Prometheus metrics the engine updates, in both modes; the worker's own are in ``consumer.metrics``.

Names follow the Prometheus conventions: a ``trs_`` prefix, base units, ``_total`` on counters.
They live in the default registry, so a process exposes them with any prometheus-client server.
"""

from __future__ import annotations

from prometheus_client import Counter

from shared.histogram import SingleWriterHistogram

__all__ = ["HTTP_REQUEST_DURATION", "HTTP_RETRIES", "status_class"]

#: Observed once per attempt, from the event loop's thread; ``shared.histogram`` says why it isn't prometheus-client's.
HTTP_REQUEST_DURATION = SingleWriterHistogram(
    "trs_http_request_duration_seconds",
    "Duration of one HTTP attempt, from send to the end of the body.",
    ["method", "status_class"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
HTTP_RETRIES = Counter("trs_http_retries_total", "HTTP attempts that were retried.")


def status_class(status_code: int | None) -> str:
    """``"2xx"`` for 204, ``"error"`` when there was no response."""
    return "error" if status_code is None else f"{status_code // 100}xx"
