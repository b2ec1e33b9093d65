"""Handing a record to a confluent-kafka producer whose local queue may be full, for the client and the worker.

``Producer.produce`` raises ``BufferError`` at once when librdkafka's local queue is full, and
``KafkaException`` when it refuses the record. The first means "wait": the queue drains as the
broker acknowledges records and delivery reports are served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from confluent_kafka import KafkaError, Message, Producer

from shared.wire import KafkaHeaders

__all__ = ["QUEUE_FULL_BACKOFF", "OnDelivery", "produce", "try_produce"]

#: Seconds to wait when the producer's local queue is full.
QUEUE_FULL_BACKOFF = 0.005

#: A delivery report callback: the error (``None`` once the broker acknowledged) and the message.
OnDelivery = Callable[[KafkaError | None, Message], None]


def try_produce(
    producer: Producer,
    topic: str,
    value: bytes,
    *,
    key: bytes | str | None,
    headers: KafkaHeaders,
    on_delivery: OnDelivery,
) -> bool:
    """Hand one record to ``producer``; ``False`` when its local queue is full, ``KafkaException`` when refused."""
    try:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
    except BufferError:
        return False
    return True


async def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    *,
    key: bytes | str | None,
    headers: KafkaHeaders,
    on_delivery: OnDelivery,
    serve_reports: bool = False,
) -> None:
    """Hand one record to ``producer``, waiting while its local queue is full; raises ``KafkaException``.

    ``serve_reports`` serves delivery reports while it waits and once the record is in, for a
    producer that nothing else polls; leave it off where another thread polls the producer.
    """
    while not try_produce(producer, topic, value, key=key, headers=headers, on_delivery=on_delivery):
        if serve_reports:
            producer.poll(0)
        await asyncio.sleep(QUEUE_FULL_BACKOFF)
    if serve_reports:
        producer.poll(0)
