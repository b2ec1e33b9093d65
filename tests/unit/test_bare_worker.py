"""The bare worker (benchmarks/bare_worker.py) is a fair floor: the worker's Kafka properties, its result bytes."""

from __future__ import annotations

import uuid

from benchmarks import bare_worker
from consumer.kafka_config import consumer_config, producer_config
from consumer.settings import EngineSettings, WorkerSettings
from shared.errors import ERROR_MESSAGES, ErrorCode
from shared.models import HttpResponse, TaskError, TaskResult
from shared.settings import KafkaSettings
from shared.wire import decode_result, encode_result_of

BOOTSTRAP = "k:9092"
BATCH_ID = "6b104960-6b104bb8-f65e3f71f814"
WORKER = "host-123"


def test_its_kafka_properties_are_the_workers() -> None:
    worker = WorkerSettings(group_id="g", session_timeout_ms=6000)
    kafka = KafkaSettings(bootstrap_servers=BOOTSTRAP)
    theirs = consumer_config(kafka, worker)
    ours = bare_worker.consumer_config(BOOTSTRAP, "g", 6000)
    assert {name: theirs[name] for name in ours} == ours

    theirs = producer_config(kafka, worker)
    ours = bare_worker.producer_config(BOOTSTRAP)
    assert {name: theirs[name] for name in ours} == ours


def test_its_constants_are_the_workers_defaults() -> None:
    worker = WorkerSettings()
    assert worker.fetch_wait_max_ms == bare_worker.FETCH_WAIT_MAX_MS
    assert worker.linger_ms == bare_worker.LINGER_MS
    assert worker.consume_batch == bare_worker.CONSUME_BATCH
    assert worker.commit_interval == bare_worker.COMMIT_INTERVAL
    assert EngineSettings().max_response_bytes == bare_worker.MAX_BODY_BYTES
    assert {code: ERROR_MESSAGES[ErrorCode(code)] for code in bare_worker.ERROR_MESSAGES} == bare_worker.ERROR_MESSAGES


def test_a_response_is_written_as_the_worker_writes_it() -> None:
    task_id = uuid.uuid4()
    headers = [("server", "nginx/1.22.1"), ("content-type", "text/plain; charset=utf-8"), ("x-é", '"q"\\')]
    body = b"\x00\xffhello\n"
    ours = bare_worker.encode_result(BATCH_ID, str(task_id), WORKER, 0.0123, (200, headers, body))
    result = TaskResult(task_id, response=HttpResponse(200, tuple(headers), body), attempts=1, elapsed=0.0123)
    theirs = encode_result_of(BATCH_ID, result, WORKER)

    assert ours == theirs
    assert decode_result(*ours).result == result


def test_an_error_is_written_as_the_worker_writes_it() -> None:
    task_id = uuid.uuid4()
    for code in bare_worker.ERROR_MESSAGES:
        ours = bare_worker.encode_result(BATCH_ID, str(task_id), WORKER, 1.5, None, code)
        result = TaskResult(task_id, error=TaskError.of(ErrorCode(code)), attempts=1, elapsed=1.5)

        assert ours == encode_result_of(BATCH_ID, result, WORKER)


def due(offsets: bare_worker.Offsets) -> list[tuple[str, int, int]]:
    # TopicPartition's equality ignores the offset.
    return [(tp.topic, tp.partition, tp.offset) for tp in offsets.due()]


def test_a_partition_is_committed_up_to_its_lowest_offset_not_done() -> None:
    offsets = bare_worker.Offsets()
    for offset in (5, 6, 7):
        offsets.add(("t", 0), offset)
    offsets.add(("t", 1), 0)
    offsets.done(("t", 0), 6)
    offsets.done(("t", 1), 0)

    assert due(offsets) == [("t", 0, 5), ("t", 1, 1)]
    # Nothing moved: nothing to commit.
    assert due(offsets) == []

    offsets.done(("t", 0), 5)
    assert due(offsets) == [("t", 0, 7)]
    offsets.done(("t", 0), 7)
    assert due(offsets) == [("t", 0, 8)]
