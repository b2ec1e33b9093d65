"""A worker refuses a task with a key it doesn't know, rather than run it without: its client gets
``invalid_task`` naming the key in the dead letter's reason (see the README's strict task files)."""

from __future__ import annotations

import json

import pytest

from producer.topics import TopicAdmin
from shared.errors import ErrorCode
from shared.wire import DLQ_TOPIC, HEADER_DLQ_REASON, encode_task, header_value
from tests.http_target import HttpTarget
from tests.integration.conftest import SharedWorker
from tests.kafka_io import new_test_batch, produce_raw, read, read_results

pytestmark = pytest.mark.integration


def test_a_task_with_an_unknown_key_ends_invalid_task(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    envelope = batch.envelope(f"{target.http}/ok")
    value, _ = encode_task(envelope)
    newer = json.loads(value)
    newer["task"]["policy"]["retry"]["max_retry_time"] = 5
    produce_raw(kafka_bootstrap, shared_worker.service.request_topic, [json.dumps(newer).encode()])

    (reply,) = read_results(kafka_bootstrap, batch.reply_topic, 1)

    assert reply.result.task_id == envelope.task.id
    assert reply.result.error is not None
    assert reply.result.error.code is ErrorCode.INVALID_TASK
    reasons = [
        (header_value(m.headers(), HEADER_DLQ_REASON) or b"").decode()
        for m in read(
            kafka_bootstrap,
            DLQ_TOPIC,
            partitions=3,
            until=lambda ms: any(str(envelope.task.id).encode() in (m.value() or b"") for m in ms),
        )
        if str(envelope.task.id).encode() in (m.value() or b"")
    ]
    assert reasons == ["task.policy.retry.max_retry_time: Extra inputs are not permitted"]
