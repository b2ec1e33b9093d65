"""librdkafka properties of the worker's three clients, each chosen on purpose.

* the group consumer reads task messages from the request topics;
* the control consumer reads cancel orders from ``trs-control`` outside the group;
* the producer writes results and dead letters.
"""

from __future__ import annotations

import uuid
from typing import Any

from consumer.settings import WorkerSettings
from shared.kafka_logging import with_kafka_logging
from shared.settings import KafkaSettings

__all__ = ["consumer_config", "control_config", "producer_config", "subscription"]


def subscription(worker: WorkerSettings) -> list[str]:
    """The topics to subscribe to: the explicit list, else the pattern (librdkafka wants a ``^``)."""
    if worker.topics:
        return list(worker.topics)
    pattern = worker.topics_pattern
    return [pattern if pattern.startswith("^") else f"^{pattern}"]


def consumer_config(kafka: KafkaSettings, worker: WorkerSettings) -> dict[str, Any]:
    config = kafka.librdkafka_config()
    config.update(
        {
            "group.id": worker.group_id,
            # Moving partitions one at a time keeps the other members working through a rebalance.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": worker.session_timeout_ms,
            "heartbeat.interval.ms": max(100, worker.session_timeout_ms // 10),
            "max.poll.interval.ms": worker.max_poll_interval_ms,
            # Offsets are committed by hand, and only once a task's result is acknowledged.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Tasks published before any worker joined are work too.
            "auto.offset.reset": "earliest",
            # A task waits for the fetch; librdkafka's 500 ms default is latency, not throughput.
            "fetch.wait.max.ms": worker.fetch_wait_max_ms,
            # New services' request topics are found by the pattern at this interval.
            "topic.metadata.refresh.interval.ms": worker.metadata_refresh_ms,
            "allow.auto.create.topics": False,
        }
    )
    if worker.instance_id:
        config["group.instance.id"] = worker.instance_id
    return with_kafka_logging(config)


def control_config(kafka: KafkaSettings, worker: WorkerSettings) -> dict[str, Any]:
    config = kafka.librdkafka_config()
    config.update(
        {
            # librdkafka needs a group id, but the control topic is assigned, never subscribed or committed.
            "group.id": f"{worker.group_id}-control-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "fetch.wait.max.ms": max(worker.fetch_wait_max_ms, 50),
            "allow.auto.create.topics": False,
        }
    )
    return with_kafka_logging(config)


def producer_config(kafka: KafkaSettings, worker: WorkerSettings) -> dict[str, Any]:
    config = kafka.librdkafka_config()
    config.update(
        {
            # The worker must never re-create a reply topic its client deleted.
            "allow.auto.create.topics": False,
            # No duplicates or reordering from the producer's own retries.
            "enable.idempotence": True,
            "acks": "all",
            # Batching results trades a few milliseconds of latency for much less CPU; see the setting.
            "linger.ms": worker.linger_ms,
            "compression.type": "lz4",
            "message.max.bytes": worker.max_message_bytes + 10_000,
        }
    )
    return with_kafka_logging(config)
