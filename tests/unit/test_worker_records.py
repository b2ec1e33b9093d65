"""Every record a runner takes ends in a result or a dead letter the broker acknowledged, whatever raises.

The producer here is a stand-in that keeps what is produced and reports each delivery on ``poll``,
as librdkafka does; what a real broker and a real worker do is tested in tests/reliability.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from consumer.fetcher import Record
from consumer.replies import Replies, ReplyTopics
from consumer.worker import Worker, WorkerConfig
from shared.errors import ErrorCode
from shared.models import HttpRequest, HttpResponse, Task, TaskEnvelope, TaskResult
from shared.wire import (
    DLQ_TOPIC,
    HEADER_DLQ_REASON,
    HEADER_DLQ_VALUE_SIZE,
    HEADER_SCHEMA,
    HeadersIn,
    decode_result,
    encode_task,
    header_value,
    reply_topic,
)

TP = ("trs-svc-http-v1-send", 0)
BATCH = "b-1"
REPLY_TOPIC = reply_topic("svc", BATCH)
SECRET = "secret-exception-text"


@dataclass
class Produced:
    topic_name: str
    value: bytes
    key: bytes | str | None
    headers: list[tuple[str, str | bytes | None]]

    def topic(self) -> str:
        return self.topic_name


class Producer:
    """Keeps what is produced and reports deliveries on ``poll``; ``refuse`` and ``fail`` give per-topic errors."""

    def __init__(self) -> None:
        self.delivered: list[Produced] = []
        self.pending: list[tuple[Produced, Callable[[KafkaError | None, Produced], None]]] = []
        self.refuse: dict[str, int] = {}
        self.fail: dict[str, int] = {}

    def produce(self, topic: str, *, value: bytes, key: Any, headers: Any, on_delivery: Any) -> None:
        if topic in self.refuse:
            raise KafkaException(KafkaError(self.refuse[topic]))
        self.pending.append((Produced(topic, value, key, headers), on_delivery))

    def poll(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for message, on_delivery in pending:
            error = self.fail.get(message.topic_name)
            if error is None:
                self.delivered.append(message)
            on_delivery(None if error is None else KafkaError(error), message)
        return len(pending)

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None)})

    def __len__(self) -> int:
        return len(self.pending)

    def on(self, topic: str) -> list[Produced]:
        return [m for m in self.delivered if m.topic_name == topic]


class Message:
    """A consumed message. With ``unreadable``, ``headers()`` behaves as confluent-kafka's does for a
    header name that isn't UTF-8: it raises, and a second call would hand out a list that crashes
    the process when touched (here, it fails the test instead)."""

    def __init__(self, value: bytes | None, headers: HeadersIn, *, unreadable: bool = False) -> None:
        self._value, self._headers, self._unreadable = value, headers, unreadable
        self.header_reads = 0

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return None

    def headers(self) -> HeadersIn:
        self.header_reads += 1
        if self._unreadable:
            if self.header_reads > 1:
                pytest.fail("headers() called again after it raised: confluent-kafka would crash here")
            raise SystemError("<method 'headers' of 'cimpl.Message' objects> returned a result with an exception set")
        return self._headers


class Engine:
    """Answers 200, or raises whatever ``raises`` holds for the next task."""

    def __init__(self) -> None:
        self.raises: list[BaseException] = []
        self.ran = 0

    async def run(self, task: Task, *, deadline: float | None = None) -> TaskResult:
        self.ran += 1
        if self.raises:
            raise self.raises.pop(0)
        return TaskResult(task_id=task.id, response=HttpResponse(status_code=200), attempts=1)


@dataclass
class Harness:
    worker: Worker
    producer: Producer
    engine: Engine
    runner: asyncio.Task[None]
    next_offset: int = 0

    def feed(self, value: bytes | None, headers: HeadersIn = None, *, unreadable: bool = False) -> int:
        offset = self.next_offset
        self.next_offset += 1
        epoch = self.worker._tracker.track(TP, offset)
        assert epoch is not None
        message = Message(value, headers, unreadable=unreadable)
        self.worker._queue.put_nowait(Record(message, TP, offset, epoch))  # type: ignore[arg-type]
        return offset

    def commit_offset(self) -> int | None:
        """The offset the partition may commit now, or ``None`` when it has not moved."""
        commits = self.worker._tracker.commits_due()
        return commits[0].offset if commits else None

    async def settle(self, produced: int) -> None:
        """Wait until the runner is idle with ``produced`` records handed to the producer, then deliver them."""
        worker = self.worker
        await until(lambda: worker._queue.empty() and worker._busy == 0 and len(self.producer.pending) >= produced)
        self.producer.poll()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the runner until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out after {timeout:g} s"
        await asyncio.sleep(0.005)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    worker = Worker(WorkerConfig())
    producer = Producer()
    engine = Engine()
    worker._tracker.assign([TP])
    topics = ReplyTopics(producer)  # type: ignore[arg-type]
    worker._reply_topics = topics
    worker._replies = Replies(
        producer=producer,  # type: ignore[arg-type]
        tracker=worker._tracker,
        topics=topics,
        worker_name="w",
        max_message_bytes=worker.config.worker.max_message_bytes,
    )
    worker._engine = engine  # type: ignore[assignment]
    runner = asyncio.create_task(worker._runner())
    yield Harness(worker, producer, engine, runner)
    worker._queue.put_nowait(None)
    await asyncio.wait_for(runner, 5)


def _task(url: str = "http://127.0.0.1:9/") -> tuple[TaskEnvelope, bytes, list[tuple[str, str | bytes | None]]]:
    envelope = TaskEnvelope(
        batch_id=BATCH,
        reply_topic=REPLY_TOPIC,
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        task=Task(service_name="svc", request=HttpRequest(url=url)),
    )
    value, headers = encode_task(envelope)
    return envelope, value, headers


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_an_exception_while_running_a_task_ends_it_internal_with_a_dead_letter(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    errors_before, dlq_before = _sample("trs_worker_internal_errors_total"), _sample("trs_worker_dlq_records_total")
    internal_before = _sample("trs_worker_tasks_total", outcome="internal")
    harness.engine.raises.append(RuntimeError(SECRET))
    envelope, value, headers = _task()

    with caplog.at_level(logging.ERROR, logger="consumer.worker"):
        offset = harness.feed(value, headers)
        await harness.settle(2)

    (result,) = [decode_result(m.value) for m in harness.producer.on(REPLY_TOPIC)]
    assert result.result.task_id == envelope.task.id
    assert result.result.error is not None
    assert result.result.error.code is ErrorCode.INTERNAL
    assert result.result.error.message == "an internal error occurred"
    (dead,) = harness.producer.on(DLQ_TOPIC)
    assert header_value(dead.headers, HEADER_DLQ_REASON) == b"internal: RuntimeError while handling the record"
    assert dead.value == value
    assert SECRET not in repr(dead.headers) + repr(result)
    assert harness.commit_offset() == offset + 1
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.getMessage() == f"handling {TP[0]}[0]@{offset} failed; it goes to trs-dlq"
    assert logged.exc_info is not None
    assert SECRET in caplog.text
    assert _sample("trs_worker_internal_errors_total") == errors_before + 1
    assert _sample("trs_worker_dlq_records_total") == dlq_before + 1
    assert _sample("trs_worker_tasks_total", outcome="internal") == internal_before + 1


async def test_the_runner_goes_on_with_the_next_record_after_an_exception(harness: Harness) -> None:
    harness.engine.raises.append(RecursionError("deep"))
    _, first, headers = _task()
    second, value, _ = _task()
    harness.feed(first, headers)
    await harness.settle(2)

    last = harness.feed(value, headers)
    await harness.settle(1)

    results = [decode_result(m.value).result for m in harness.producer.on(REPLY_TOPIC)]
    assert [r.outcome for r in results] == ["internal", "response"]
    assert results[1].task_id == second.task.id
    assert harness.commit_offset() == last + 1
    assert not harness.runner.done()


async def test_an_exception_before_the_task_is_read_still_dead_letters_the_record(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> TaskEnvelope:
        raise MemoryError("no room")

    monkeypatch.setattr(harness.worker._decoder, "decode", broken)
    _, value, headers = _task()

    with caplog.at_level(logging.ERROR, logger="consumer.worker"):
        offset = harness.feed(value, headers)
        await harness.settle(1)

    (dead,) = harness.producer.on(DLQ_TOPIC)
    assert header_value(dead.headers, HEADER_DLQ_REASON) == b"internal: MemoryError while handling the record"
    assert harness.producer.on(REPLY_TOPIC) == []
    assert harness.commit_offset() == offset + 1
    assert len([r for r in caplog.records if r.exc_info]) == 1


async def test_a_runner_that_fails_between_records_goes_on(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    errors_before = _sample("trs_worker_internal_errors_total")
    queue = harness.worker._queue
    real_get_nowait = queue.get_nowait
    calls = 0

    def get_nowait() -> Record | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the queue broke")
        return real_get_nowait()

    queue.get_nowait = get_nowait  # type: ignore[method-assign]
    _, value, headers = _task()

    with caplog.at_level(logging.ERROR, logger="consumer.worker"):
        offset = harness.feed(value, headers)
        await harness.settle(1)

    assert [r.getMessage() for r in caplog.records] == ["a runner failed between records; it goes on"]
    assert caplog.records[0].exc_info is not None
    assert _sample("trs_worker_internal_errors_total") == errors_before + 1
    assert [decode_result(m.value).result.outcome for m in harness.producer.on(REPLY_TOPIC)] == ["response"]
    assert harness.commit_offset() == offset + 1


async def test_a_dead_letter_counts_only_once_the_broker_acknowledged_it(harness: Harness) -> None:
    before = _sample("trs_worker_dlq_records_total")
    offset = harness.feed(b"not json")
    await until(lambda: bool(harness.producer.pending))

    assert _sample("trs_worker_dlq_records_total") == before
    assert harness.commit_offset() == offset
    harness.producer.poll()
    assert _sample("trs_worker_dlq_records_total") == before + 1
    assert harness.commit_offset() == offset + 1


@pytest.mark.parametrize("failure", ["refused", "delivery failed", "trs-dlq missing"])
async def test_a_dead_letter_that_can_not_be_written_leaves_the_record_incomplete(
    harness: Harness, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    if failure == "refused":
        harness.producer.refuse[DLQ_TOPIC] = KafkaError.MSG_SIZE_TOO_LARGE
    elif failure == "delivery failed":
        harness.producer.fail[DLQ_TOPIC] = KafkaError._MSG_TIMED_OUT
    else:
        harness.producer.fail[DLQ_TOPIC] = KafkaError.UNKNOWN_TOPIC_OR_PART
    dlq_before, errors_before = _sample("trs_worker_dlq_records_total"), _sample("trs_worker_produce_errors_total")

    with caplog.at_level(logging.ERROR, logger="consumer.replies"):
        offset = harness.feed(b"not json")
        await harness.settle(0 if failure == "refused" else 1)

    assert harness.commit_offset() == offset
    assert _sample("trs_worker_dlq_records_total") == dlq_before
    assert _sample("trs_worker_produce_errors_total") == errors_before + 1
    (logged,) = caplog.records
    assert logged.getMessage().startswith(f"could not write {TP[0]}[0]@{offset} to trs-dlq: ")
    assert logged.getMessage().endswith("; it stays incomplete and runs again")
    assert not harness.runner.done()


async def test_a_record_too_big_for_the_dlq_goes_there_as_its_size_and_digest(harness: Harness) -> None:
    envelope, value, headers = _task()
    big = json.loads(value)
    big["task"]["request"]["body"] = base64.b64encode(b"x" * 1_500_000).decode()
    raw = json.dumps(big).encode()

    offset = harness.feed(raw, headers)
    await harness.settle(2)

    (dead,) = harness.producer.on(DLQ_TOPIC)
    assert json.loads(dead.value)["size"] == len(raw)
    assert header_value(dead.headers, HEADER_DLQ_VALUE_SIZE) == str(len(raw)).encode()
    assert header_value(dead.headers, HEADER_SCHEMA) == b"1"
    size = len(raw) + sum(len(k) + len(v or b"") for k, v in headers)
    reason = f"message: {size} bytes, over the limit of 1000000"
    assert header_value(dead.headers, HEADER_DLQ_REASON) == reason.encode()
    (result,) = [decode_result(m.value).result for m in harness.producer.on(REPLY_TOPIC)]
    assert (result.task_id, result.outcome) == (envelope.task.id, "invalid_task")
    assert harness.engine.ran == 0
    assert harness.commit_offset() == offset + 1


async def test_a_record_whose_headers_can_not_be_read_is_read_once_and_dead_lettered(harness: Harness) -> None:
    # The first read fails; a second one, anywhere on the dead-letter path, would crash a real worker.
    envelope, value, _ = _task()
    offset = harness.feed(value, unreadable=True)
    await harness.settle(2)

    (dead,) = harness.producer.on(DLQ_TOPIC)
    assert [k for k, _ in dead.headers if not k.startswith("trs-dlq-")] == []
    reason = "headers: the Kafka client could not read them (a header name that is not UTF-8)"
    assert header_value(dead.headers, HEADER_DLQ_REASON) == reason.encode()
    (result,) = [decode_result(m.value).result for m in harness.producer.on(REPLY_TOPIC)]
    assert (result.task_id, result.outcome) == (envelope.task.id, "invalid_task")
    assert harness.commit_offset() == offset + 1


async def test_an_internal_failure_after_unreadable_headers_reads_them_no_more(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> TaskEnvelope:
        raise RuntimeError("bug")

    monkeypatch.setattr(harness.worker._decoder, "decode", broken)
    _, value, _ = _task()
    offset = harness.feed(value, unreadable=True)
    await harness.settle(1)

    (dead,) = harness.producer.on(DLQ_TOPIC)
    assert header_value(dead.headers, HEADER_DLQ_REASON) == b"internal: RuntimeError while handling the record"
    assert harness.commit_offset() == offset + 1
