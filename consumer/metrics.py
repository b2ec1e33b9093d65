"""The worker's own Prometheus metrics, beside the engine's in ``shared.metrics``.

Names follow the Prometheus conventions: a ``trs_worker_`` prefix, base units, ``_total`` on counters.
They live in the default registry, which the worker's health server exposes on ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "WORKER_DLQ_RECORDS",
    "WORKER_INFLIGHT",
    "WORKER_INTERNAL_ERRORS",
    "WORKER_PARTITIONS_PAUSED",
    "WORKER_PARTITION_LAG",
    "WORKER_PRODUCE_ERRORS",
    "WORKER_RESULTS_DROPPED",
    "WORKER_TASKS_COMPLETED",
    "WORKER_TASKS_RECEIVED",
]

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
