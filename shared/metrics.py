"""Prometheus metrics shared by the engine (both modes) and the worker.

Names follow the Prometheus conventions: a ``trs_`` prefix, base units, ``_total`` on counters.
They live in the default registry, so a process exposes them with any prometheus-client server.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from shared.histogram import SingleWriterHistogram

__all__ = [
    "HTTP_REQUEST_DURATION",
    "HTTP_RETRIES",
    "WORKER_DLQ_RECORDS",
    "WORKER_INFLIGHT",
    "WORKER_INTERNAL_ERRORS",
    "WORKER_PARTITIONS_PAUSED",
    "WORKER_PARTITION_LAG",
    "WORKER_PRODUCE_ERRORS",
    "WORKER_RESULTS_DROPPED",
    "WORKER_TASKS_COMPLETED",
    "WORKER_TASKS_RECEIVED",
    "status_class",
]

#: Observed once per attempt, from the event loop's thread; ``shared.histogram`` says why it isn't prometheus-client's.
HTTP_REQUEST_DURATION = SingleWriterHistogram(
    "trs_http_request_duration_seconds",
    "Duration of one HTTP attempt, from send to the end of the body.",
    ["method", "status_class"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
HTTP_RETRIES = Counter("trs_http_retries_total", "HTTP attempts that were retried.")

WORKER_TASKS_RECEIVED = Counter("trs_worker_tasks_received_total", "Task messages the worker consumed.")
WORKER_TASKS_COMPLETED = Counter(
    "trs_worker_tasks_total", "Tasks the worker finished, by outcome (response or error code).", ["outcome"]
)
WORKER_INFLIGHT = Gauge("trs_worker_tasks_inflight", "Tasks the worker is running right now.")
WORKER_PARTITIONS_PAUSED = Gauge(
    "trs_worker_partitions_paused", "1 while the worker has paused its partitions for backpressure."
)
WORKER_DLQ_RECORDS = Counter(
    "trs_worker_dlq_records_total", "Messages sent to the dead-letter topic, once the broker acknowledged each."
)
WORKER_INTERNAL_ERRORS = Counter(
    "trs_worker_internal_errors_total",
    "Unexpected exceptions while the worker handled a record; each is in its log with the traceback.",
)
WORKER_PRODUCE_ERRORS = Counter("trs_worker_produce_errors_total", "Result or DLQ records the broker rejected.")
WORKER_RESULTS_DROPPED = Counter(
    "trs_worker_results_dropped_total", "Results dropped because their reply topic no longer exists."
)
WORKER_PARTITION_LAG = Gauge(
    "trs_worker_partition_lag_messages",
    "Messages between the worker's position and the partition's high watermark.",
    ["topic", "partition"],
)


def status_class(status_code: int | None) -> str:
    """``"2xx"`` for 204, ``"error"`` when there was no response."""
    return "error" if status_code is None else f"{status_code // 100}xx"
