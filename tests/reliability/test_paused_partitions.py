"""A partition paused by backpressure, revoked, and assigned back to the same worker is read again.

librdkafka keeps a partition's pause across revoke and assign. A worker whose backlog paused its
partitions, that lost some of them to a new member, resumed the rest and later got the first ones
back, used to leave those paused for good: their tasks never ran and their commits stalled.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from producer.topics import TopicAdmin
from shared.models import CancelEnvelope
from shared.wire import CONTROL_TOPIC, encode_cancel
from tests.http_target import HttpTarget
from tests.integration.conftest import new_service
from tests.kafka_io import new_test_batch, produce, read_results
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = pytest.mark.integration


def _cancel(bootstrap: str, batch_id: str, deadline: datetime) -> None:
    value, headers = encode_cancel(CancelEnvelope(batch_id=batch_id, deadline=deadline))
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(CONTROL_TOPIC, value=value, headers=headers, key=batch_id)
    assert producer.flush(10) == 0


def test_partitions_paused_then_revoked_then_assigned_back_are_read_again(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=4)
    slow = new_test_batch(admin, service.name, seconds=120)
    # Five run and five wait, so the partitions stay paused until the batch is cancelled.
    held = [slow.envelope(f"{target.http}/sleep?s=60", timeout=120) for _ in range(10)]
    group_id = f"workers-{uuid.uuid4().hex[:8]}"

    with running_workers(
        kafka_bootstrap, tmp_path, group_id=group_id, topics=[service.request_topic], max_inflight=5
    ) as (worker,):
        produce(kafka_bootstrap, service.request_topic, held)
        wait_until(lambda: worker.metrics()["trs_worker_partitions_paused"] == 1, 20, "the partitions paused")
        # A second member takes half the partitions while they are paused; the first worker then
        # resumes the ones it kept; the second leaves and the first gets its partitions back.
        other = WorkerProcess(
            kafka_bootstrap, tmp_path / "other.log", group_id=group_id, topics=[service.request_topic], max_inflight=5
        )
        try:
            other.wait_ready()
            wait_until(lambda: "revoked" in worker.log(), 20, "the first worker to give partitions up")
            paused_at_revoke = worker.metrics()["trs_worker_partitions_paused"]
            _cancel(kafka_bootstrap, slow.batch_id, slow.deadline)
            wait_until(lambda: worker.metrics()["trs_worker_partitions_paused"] == 0, 20, "the rest resumed")
            assert other.terminate() == 0
        finally:
            other.close()
        wait_until(lambda: worker.log().count("assigned") >= 2, 30, "the partitions assigned back")

        fast = new_test_batch(admin, service.name)
        envelopes = [fast.envelope(f"{target.http}/ok") for _ in range(40)]
        sent = produce(kafka_bootstrap, service.request_topic, envelopes)
        results = read_results(kafka_bootstrap, fast.reply_topic, len(envelopes), timeout=20)

    assert paused_at_revoke == 1
    assert {s.partition for s in sent} == set(range(service.partitions))
    assert {r.result.task_id for r in results} == {e.task.id for e in envelopes}
