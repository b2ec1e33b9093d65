"""A worker on the real broker, fed by hand with ``shared.wire``: results, skips, dead letters, metrics.

The tests here share one worker (``shared_worker``) and never stop it; each uses its own batch.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Message, Producer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from producer.topics import TopicAdmin
from shared.errors import ErrorCode
from shared.models import CancelEnvelope
from shared.wire import (
    CONTROL_TOPIC,
    DLQ_TOPIC,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_REASON,
    HEADER_DLQ_TOPIC,
    KafkaHeaders,
    encode_cancel,
    encode_task,
    header_value,
)
from tests.http_target import HttpTarget
from tests.integration.conftest import SharedWorker
from tests.kafka_io import new_test_batch, produce, produce_raw, read, read_results
from tests.tools import require_tool
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def test_two_thousand_tasks_give_two_thousand_correct_results(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    envelopes = [batch.envelope(f"{target.http}/echo", method="POST", body=f"task {n}".encode()) for n in range(2000)]
    produce(kafka_bootstrap, shared_worker.service.request_topic, envelopes)

    results = read_results(kafka_bootstrap, batch.reply_topic, 2000, settle=1.0)

    assert len(results) == 2000
    by_task = {r.result.task_id: r for r in results}
    assert set(by_task) == {e.task.id for e in envelopes}
    for envelope in envelopes:
        reply = by_task[envelope.task.id]
        assert reply.batch_id == batch.batch_id
        assert reply.result.response is not None
        assert reply.result.response.status_code == 200
        echoed = json.loads(reply.result.response.body)
        assert echoed["method"] == "POST"
        assert echoed["body"] == _b64(envelope.task.request.body)


def test_a_task_past_its_deadline_expires_unsent(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    key = uuid.uuid4().hex
    late = batch.envelope(f"{target.http}/status/200?key={key}").model_copy(
        update={"deadline": datetime.now(UTC) - timedelta(seconds=1)}
    )
    produce(kafka_bootstrap, shared_worker.service.request_topic, [late])

    (reply,) = read_results(kafka_bootstrap, batch.reply_topic, 1)

    assert reply.result.task_id == late.task.id
    assert reply.result.error is not None
    assert reply.result.error.code is ErrorCode.EXPIRED
    assert reply.result.error.message == "the task's deadline passed before it started"
    assert target.hits(key) == 0


def test_tasks_of_a_cancelled_batch_end_cancelled_unsent(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    key = uuid.uuid4().hex
    cancelled_before = _cancelled_count(shared_worker)
    value, headers = encode_cancel(CancelEnvelope(batch_id=batch.batch_id, deadline=batch.deadline))
    _produce_control(kafka_bootstrap, value, headers, batch.batch_id)
    _wait_for_log(shared_worker, f"batch {batch.batch_id} cancelled")
    envelopes = [batch.envelope(f"{target.http}/status/200?key={key}") for _ in range(5)]
    produce(kafka_bootstrap, shared_worker.service.request_topic, envelopes)

    results = read_results(kafka_bootstrap, batch.reply_topic, 5)

    assert {r.result.task_id for r in results} == {e.task.id for e in envelopes}
    assert {r.result.error.code for r in results if r.result.error} == {ErrorCode.CANCELLED}
    assert target.hits(key) == 0
    assert _cancelled_count(shared_worker) - cancelled_before == 5


def test_a_cancel_order_cuts_its_batch_s_tasks_in_flight(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    key = uuid.uuid4().hex
    envelopes = [batch.envelope(f"{target.http}/sleep?s=30&key={key}", timeout=40) for _ in range(3)]
    produce(kafka_bootstrap, shared_worker.service.request_topic, envelopes)
    wait_until(lambda: target.sleeping(key) == 3, what="three tasks in flight")

    value, headers = encode_cancel(CancelEnvelope(batch_id=batch.batch_id, deadline=batch.deadline))
    _produce_control(kafka_bootstrap, value, headers, batch.batch_id)
    # Far sooner than the 30 s the target takes.
    results = read_results(kafka_bootstrap, batch.reply_topic, 3, timeout=15)

    assert {r.result.task_id for r in results} == {e.task.id for e in envelopes}
    assert all(r.result.error is not None and r.result.error.code is ErrorCode.CANCELLED for r in results)
    assert f"batch {batch.batch_id} cancelled: 3 tasks in flight cut" in shared_worker.worker.log()


def test_a_deleted_reply_topic_is_not_recreated(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    key = uuid.uuid4().hex
    fast = batch.envelope(f"{target.http}/ok")
    # Outlives the worker's cached knowledge that the topic exists.
    slow = batch.envelope(f"{target.http}/sleep?s=2.5&key={key}")
    dropped_before = shared_worker.worker.metrics()["trs_worker_results_dropped_total"]
    produce(kafka_bootstrap, shared_worker.service.request_topic, [fast, slow])
    (first,) = read_results(kafka_bootstrap, batch.reply_topic, 1)
    wait_until(lambda: target.hits(key) == 1)

    admin.delete([batch.reply_topic])
    # Dropping the result is the worker's last step with the batch: after it, nothing could re-create the topic.
    wait_until(lambda: shared_worker.worker.metrics()["trs_worker_results_dropped_total"] > dropped_before)

    assert first.result.task_id == fast.task.id
    assert not admin.exists(batch.reply_topic)
    assert shared_worker.worker.metrics()["trs_worker_results_dropped_total"] == dropped_before + 1


def test_an_invalid_task_goes_to_the_dlq_and_its_client_gets_invalid_task(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    batch = new_test_batch(admin, shared_worker.service.name)
    envelope = batch.envelope(f"{target.http}/ok")
    value, _ = encode_task(envelope)
    broken = json.loads(value)
    broken["task"]["request"]["url"] = "ftp://127.0.0.1/file"
    ((partition, offset),) = produce_raw(
        kafka_bootstrap, shared_worker.service.request_topic, [json.dumps(broken).encode()]
    )

    (reply,) = read_results(kafka_bootstrap, batch.reply_topic, 1)
    dead = _dead_letters(kafka_bootstrap, shared_worker.service.request_topic, {(partition, offset)})

    assert reply.result.task_id == envelope.task.id
    assert reply.result.error is not None
    assert reply.result.error.code is ErrorCode.INVALID_TASK
    assert reply.result.error.message == "the task message is not a valid TRS task"
    reason = dead[(partition, offset)]
    assert "task.request.url" in reason
    assert "URL scheme must be http or https" in reason


def test_a_thousand_random_payloads_all_reach_the_dlq_and_the_worker_stays_up(
    kafka_bootstrap: str, shared_worker: SharedWorker
) -> None:
    payloads: list[bytes] = []

    @settings(
        max_examples=1000,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(st.binary(max_size=512), _json_like().map(lambda v: json.dumps(v).encode())))
    def collect(payload: bytes) -> None:
        payloads.append(payload)

    collect()
    payloads = payloads[:1000]
    assert len(payloads) == 1000
    placed = produce_raw(kafka_bootstrap, shared_worker.service.request_topic, payloads)

    dead = _dead_letters(kafka_bootstrap, shared_worker.service.request_topic, set(placed))

    assert set(dead) == set(placed)
    assert all(reason for reason in dead.values())
    assert shared_worker.worker.process.poll() is None
    assert shared_worker.worker.get("/healthz") == (200, "ok\n")


def test_metrics_pass_promtool(shared_worker: SharedWorker) -> None:
    promtool = require_tool("promtool", "prometheus")
    status, text = shared_worker.worker.get("/metrics")

    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)

    assert status == 200
    for name in (
        "trs_worker_tasks_received_total",
        "trs_worker_tasks_total",
        "trs_http_retries_total",
        "trs_http_request_duration_seconds_bucket",
        "trs_worker_tasks_inflight",
        "trs_worker_partitions_paused",
        "trs_worker_dlq_records_total",
        "trs_worker_produce_errors_total",
        "trs_worker_partition_lag_messages",
    ):
        assert f"\n{name}" in text, name
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


def _json_like() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    ["schema_version", "batch_id", "reply_topic", "deadline", "task", "request", "url", "id"]
                )
                | st.text(max_size=8),
                children,
                max_size=5,
            )
        ),
        max_leaves=12,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _dead_letters(bootstrap: str, source_topic: str, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """DLQ reasons of ``source_topic``'s records, by ``(partition, offset)``, once all of ``wanted`` are in."""
    found: dict[tuple[int, int], str] = {}

    def done(messages: list[Message]) -> bool:
        found.clear()
        for message in messages:
            headers = message.headers()
            if header_value(headers, HEADER_DLQ_TOPIC) != source_topic.encode():
                continue
            place = (
                int(header_value(headers, HEADER_DLQ_PARTITION) or b"-1"),
                int(header_value(headers, HEADER_DLQ_OFFSET) or b"-1"),
            )
            found[place] = (header_value(headers, HEADER_DLQ_REASON) or b"").decode()
        return wanted <= set(found)

    read(bootstrap, DLQ_TOPIC, until=done, timeout=90, partitions=3)
    return {place: reason for place, reason in found.items() if place in wanted}


def _produce_control(bootstrap: str, value: bytes, headers: KafkaHeaders, key: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(CONTROL_TOPIC, value=value, headers=headers, key=key)
    assert producer.flush(10) == 0


def _cancelled_count(shared: SharedWorker) -> float:
    return shared.worker.metrics().get('trs_worker_tasks_total{outcome="cancelled"}', 0.0)


def _wait_for_log(shared: SharedWorker, text: str, timeout: float = 15.0) -> None:
    wait_until(lambda: text in shared.worker.log(), timeout, f"{text!r} in the worker log")
