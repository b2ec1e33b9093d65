"""The reply reader against a real gap in a reply topic's offsets: it reads the gap again, then reads on.

A gap the embedded broker shows a reader for a moment (``producer.reply_gaps``) can't be made on
demand; a transaction's commit marker is a gap that stays, as on any Kafka broker, so it shows
what the reader does with a gap that never fills: a bounded number of reads again, a warning,
and every result on either side of it delivered.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from confluent_kafka import Producer

from producer.remote import reply_consumer_config
from producer.reply_gaps import MAX_REREADS
from producer.reply_reader import ReplyReader
from producer.topics import TopicAdmin, TopicSpec
from shared.errors import ErrorCode
from shared.models import ResultEnvelope, TaskError, TaskResult
from shared.settings import KafkaSettings
from shared.wire import encode_result, reply_topic
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_a_gap_that_never_fills_is_read_again_a_bounded_number_of_times_and_nothing_around_it_is_lost(
    kafka_bootstrap: str, admin: TopicAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="producer")
    batch_id = uuid.uuid4().hex
    topic = reply_topic("gaps", batch_id)
    admin.create(TopicSpec(topic, 1, timedelta(hours=1)))
    received: list[uuid.UUID] = []
    reader = ReplyReader(
        reply_consumer_config(KafkaSettings(bootstrap_servers=kafka_bootstrap)),
        lambda envelopes: received.extend(e.result.task_id for e in envelopes),
    )
    reader.start()
    try:
        reader.assign(topic, 1).result(10)
        # Offset 0 in a transaction, its commit marker at 1 (never shown to a reader), offset 2 outside.
        in_transaction, after = uuid.uuid4(), uuid.uuid4()
        transactional = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"gaps-{batch_id}"})
        transactional.init_transactions(10)
        transactional.begin_transaction()
        _produce(transactional, topic, batch_id, in_transaction)
        transactional.commit_transaction(10)
        plain = Producer({"bootstrap.servers": kafka_bootstrap})
        _produce(plain, topic, batch_id, after)
        assert plain.flush(10) == 0

        hole = f"offset 1 of {topic}[0] never came after {MAX_REREADS} reads: the broker left a hole there"
        wait_until(lambda: hole in caplog.text, timeout=10, what="the reader to let the gap be")
    finally:
        reader.close()

    rereads = [r for r in caplog.records if f"reading {topic}[0] again from offset 1" in r.getMessage()]
    assert len(rereads) == MAX_REREADS
    # Each read again from the gap brought the result after it once more; the batch drops the copies.
    assert received[:2] == [in_transaction, after]
    assert set(received) == {in_transaction, after}
    assert len(received) == 2 + MAX_REREADS


def _produce(producer: Producer, topic: str, batch_id: str, task_id: uuid.UUID) -> None:
    result = TaskResult(task_id=task_id, error=TaskError.of(ErrorCode.EXPIRED))
    value, headers = encode_result(ResultEnvelope(batch_id=batch_id, result=result))
    producer.produce(topic, value=value, key=str(task_id), headers=headers)
