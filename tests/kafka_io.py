"""Plain confluent-kafka helpers for tests that act as a hand-rolled client of the worker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from producer.topics import TopicAdmin, TopicSpec
from shared.models import HttpRequest, ResultEnvelope, Task, TaskEnvelope
from shared.wire import decode_result, encode_task, new_batch_id, reply_topic


@dataclass(frozen=True)
class Sent:
    """Where a produced task landed."""

    task_id: uuid.UUID
    partition: int
    offset: int


@dataclass(frozen=True)
class TestBatch:
    """A batch id and its reply topic, made the way the client makes them."""

    service: str
    batch_id: str
    reply_topic: str
    deadline: datetime

    def envelope(self, url: str, *, timeout: float = 30.0, **request: object) -> TaskEnvelope:
        return TaskEnvelope(
            batch_id=self.batch_id,
            reply_topic=self.reply_topic,
            deadline=self.deadline,
            task=Task(service_name=self.service, request=HttpRequest(url=url, **request), timeout=timeout),
        )


def new_test_batch(admin: TopicAdmin, service: str, *, seconds: float = 60.0, partitions: int = 1) -> TestBatch:
    """A fresh batch whose reply topic exists."""
    now = datetime.now(UTC)
    deadline = now + timedelta(seconds=seconds)
    batch_id = new_batch_id(now, deadline)
    topic = reply_topic(service, batch_id)
    admin.create(TopicSpec(topic, partitions, timedelta(hours=1)))
    return TestBatch(service, batch_id, topic, deadline)


def produce(
    bootstrap: str, topic: str, envelopes: Sequence[TaskEnvelope], *, partition: int | None = None
) -> list[Sent]:
    """Produce each envelope (keyed by task id) and wait for every delivery report."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    sent: list[Sent] = []
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)
        else:
            sent.append(
                Sent(uuid.UUID((message.key() or b"").decode()), message.partition() or 0, message.offset() or 0)
            )

    for envelope in envelopes:
        value, headers = encode_task(envelope)
        key = str(envelope.task.id)
        if partition is None:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        else:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered, partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors, errors
    return sent


def produce_raw(bootstrap: str, topic: str, values: Sequence[bytes]) -> list[tuple[int, int]]:
    """Produce raw values; returns each one's ``(partition, offset)`` in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    placed: dict[int, tuple[int, int]] = {}
    for index, value in enumerate(values):

        def delivered(error: KafkaError | None, message: Message, index: int = index) -> None:
            assert error is None, error
            placed[index] = (message.partition() or 0, message.offset() or 0)

        producer.produce(topic, value=value, key=str(index).encode(), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0
    return [placed[i] for i in range(len(values))]


def read(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Message]], bool],
    timeout: float = 60.0,
    partitions: int = 1,
) -> list[Message]:
    """Messages of ``topic`` from the start, until ``until(messages)`` holds or ``timeout`` passes."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-reader-{uuid.uuid4().hex}", "fetch.wait.max.ms": 10}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(messages) and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(500, 0.1) if m.error() is None]
    finally:
        consumer.close()
    return messages


def read_results(
    bootstrap: str, topic: str, count: int, *, timeout: float = 60.0, settle: float = 0.0
) -> list[ResultEnvelope]:
    """At least ``count`` results from a reply topic (then ``settle`` more seconds of whatever else comes)."""
    messages = read(bootstrap, topic, until=lambda m: len(m) >= count, timeout=timeout)
    if settle:
        messages = read(bootstrap, topic, until=lambda m: False, timeout=settle)
    return [decode_result(m.value(), m.headers()) for m in messages]


def committed(bootstrap: str, group_id: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition (negative when none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return [tp.offset for tp in offsets]
