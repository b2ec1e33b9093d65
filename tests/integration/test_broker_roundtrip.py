"""An encoded envelope goes through a real broker and comes back equal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from shared.models import HttpRequest, Task, TaskEnvelope
from shared.wire import HEADER_SCHEMA, decode_task, encode_task, header_value, reply_topic

pytestmark = pytest.mark.integration


def test_envelope_round_trip_through_the_broker(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topic = f"trs-roundtrip-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    envelope = TaskEnvelope(
        batch_id="b1",
        reply_topic=reply_topic("svc", "b1"),
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        task=Task(
            service_name="svc",
            request=HttpRequest(
                method="POST", url="https://127.0.0.1/x", headers=[("A", "1"), ("A", "2é")], body=b"\x00\xff"
            ),
        ),
    )
    value, headers = encode_task(envelope)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    producer.produce(topic, value=value, headers=headers, key=str(envelope.task.id))
    assert producer.flush(10) == 0

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "unused", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    try:
        messages: list[Message] = []
        for _ in range(50):
            messages.extend(m for m in consumer.consume(1, timeout=0.2) if m.error() is None)
            if messages:
                break
    finally:
        consumer.close()

    assert len(messages) == 1
    message = messages[0]
    assert header_value(message.headers(), HEADER_SCHEMA) == b"1"
    assert decode_task(message.value(), message.headers()) == envelope

    admin.delete_topics([topic])[topic].result(10)
    assert topic not in admin.list_topics(timeout=10).topics
