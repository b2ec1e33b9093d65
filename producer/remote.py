"""Remote mode: a batch goes through Kafka to ``trs-worker`` processes and its results come back.

For each batch, ``start``:

1. checks that the service's request topic exists (it raises ``TopicMissing`` with the remedy
   rather than create it, since the workers would only find a new topic at their next metadata
   refresh; checked at every launch, so a broker that came back without its topics is told at
   once), then creates the batch's reply topic and assigns it to the reply reader;
2. starts the batch's publisher, which sends each task to the request topic while the runner has
   fewer than ``max_inflight`` tasks out, so the limit means the same as in local mode. A task whose
   deadline passed while it waited for a slot ends ``expired`` without being sent;
3. starts the batch's deadline watch: a task with no result by its deadline plus ``result_grace``
   ends ``no_result``.

Results arrive from the reply reader, are deduplicated by ``Batch.deliver`` (delivery is at least
once) and free their task's slot. ``cancel`` publishes an order to ``trs-control``, which every
worker reads, then ends the open tasks ``cancelled``. ``close`` also deletes the reply topic.
Every blocking Kafka call runs in a thread and is bounded by ``request_timeout``.

A reply topic deleted while its batch runs (by ``trs topics gc``, after its release notice, see
``producer.reply_reader``) ends the batch's open tasks ``no_result`` at their deadline plus grace,
like any result that never comes; the runner and its other batches go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from producer.backend import Backend
from producer.batch import Batch
from producer.reply_reader import ReplyReader
from producer.shared_producer import shared_producer
from producer.topics import TopicAdmin, TopicSpec
from shared.engine import TlsConfig
from shared.errors import BrokerUnavailable, ErrorCode, TopicMissing, UsageError
from shared.kafka_logging import with_kafka_logging
from shared.models import CancelEnvelope, ResultEnvelope, Task, TaskEnvelope, TaskResult, error_result
from shared.producing import produce
from shared.settings import KafkaSettings
from shared.wire import CONTROL_TOPIC, encode_cancel, encode_task, reply_topic, request_topic

__all__ = ["DEFAULT_RESULT_GRACE", "PartitionKey", "RemoteBackend"]

log = logging.getLogger(__name__)

#: What a task message is keyed by, and so which partition, and which worker, gets it:
#: ``"task"`` (its id: even spread, the default) or ``"host"`` (its target: one worker per host).
PartitionKey = Literal["task", "host"]

#: Seconds past a task's deadline that its result may still take to arrive.
DEFAULT_RESULT_GRACE = 5.0
#: Seconds a blocking Kafka call (metadata, topic admin, flush) may take.
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Tasks per reply-topic partition, up to ``MAX_REPLY_PARTITIONS``: more partitions let more
#: workers' results land in parallel, and cost the broker little.
TASKS_PER_REPLY_PARTITION = 1000
MAX_REPLY_PARTITIONS = 12
#: A reply topic outlives its batch's last deadline by this much, then the broker drops its data.
REPLY_RETENTION_MARGIN = timedelta(hours=1)
#: Seconds between the reply reader letting go of a reply topic and its deletion: fifty times
#: the longest a fetch waits at the broker (see ``_settle``).
UNASSIGN_SETTLE = 0.25


def request_producer_config(kafka: KafkaSettings) -> dict[str, object]:
    config = kafka.librdkafka_config()
    config.update(
        {
            # Tasks must never create topics by accident, and must not be duplicated or
            # reordered by the producer's own retries.
            "allow.auto.create.topics": False,
            "enable.idempotence": True,
            "acks": "all",
            # A one-task batch waits for this before its task leaves; a large batch fills its
            # message sets within it anyway.
            "linger.ms": 1,
            "compression.type": "lz4",
        }
    )
    return config


def reply_consumer_config(kafka: KafkaSettings) -> dict[str, object]:
    config = kafka.librdkafka_config()
    config.update(
        {
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "allow.auto.create.topics": False,
            # Results are waited on: a broker that holds fetches until data arrives answers at
            # once anyway, and one that doesn't (the embedded broker) answers within this.
            "fetch.wait.max.ms": 5,
            "fetch.error.backoff.ms": 50,
            # A reply topic re-created under the reader (a broker that lost its data, and workers
            # producing again) starts at offset 0 again: read it all, duplicates are dropped.
            "auto.offset.reset": "earliest",
        }
    )
    return with_kafka_logging(config)


@dataclass
class _RemoteBatch:
    """What the backend keeps for one launched batch."""

    batch: Batch
    reply_topic: str
    partitions: int
    launched_wall: datetime
    #: Tasks sent and not yet answered; each holds one of the runner's in-flight slots.
    out: set[uuid.UUID] = field(default_factory=set)
    jobs: list[asyncio.Task[None]] = field(default_factory=list)
    #: Done once the reply reader stopped reading the topic, and when that was.
    unassigned: Future[None] | None = None
    unassigned_at: float | None = None
    #: Whether the broker refused a task message of the batch; only the first refusal is logged.
    publish_failed: bool = False

    def deadline(self, task: Task) -> datetime:
        return self.launched_wall + timedelta(seconds=task.timeout)

    def delivered(self, error: KafkaError | None, message: Message) -> None:
        """The producer's delivery report of one task message."""
        if error is None or self.publish_failed:
            return
        # One line per batch, not one per task: a broker that lost the topic refuses them all.
        self.publish_failed = True
        log.error(
            "could not publish a task of batch %s to %s: %s; tasks not published end no_result "
            "at their deadline plus grace",
            self.batch.id,
            message.topic(),
            error.str(),
        )


class RemoteBackend(Backend):
    """Runs batches through Kafka and ``trs-worker`` processes."""

    def __init__(
        self,
        *,
        service_name: str,
        kafka: KafkaSettings,
        max_inflight: int,
        result_grace: float = DEFAULT_RESULT_GRACE,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        partition_key: PartitionKey = "task",
    ) -> None:
        self._service = service_name
        self._kafka = kafka
        self._grace = result_grace
        self._timeout = request_timeout
        self._key = _task_key if partition_key == "task" else _host_key
        self._request_topic = request_topic(service_name)
        self._slots = asyncio.Semaphore(max_inflight)
        self._batches: dict[str, _RemoteBatch] = {}
        #: Reply topics of closed batches, each waiting to be deleted (see ``_delete_when_settled``).
        self._deletions: dict[str, asyncio.Task[None]] = {}
        self._admin = TopicAdmin(kafka.librdkafka_config(), timeout=request_timeout)
        self._producer: Producer | None = None
        self._reader: ReplyReader | None = None

    # Launch -----------------------------------------------------------------------------------

    async def start(self, batch: Batch) -> None:
        # First, so that a new producer's wait for its producer id overlaps the topic work.
        self._producer_started()
        launched_wall = datetime.now(UTC) - timedelta(seconds=time.monotonic() - batch.launched_at)
        topic = reply_topic(self._service, batch.id)
        partitions = min(MAX_REPLY_PARTITIONS, max(1, math.ceil(len(batch) / TASKS_PER_REPLY_PARTITION)))
        longest = max((t.timeout for t in batch.tasks), default=0.0)
        retention = timedelta(seconds=longest + self._grace) + REPLY_RETENTION_MARGIN
        await asyncio.to_thread(self._prepare, TopicSpec(topic, partitions, retention))
        state = _RemoteBatch(batch, topic, partitions, launched_wall)
        self._batches[batch.id] = state
        self._reader_started().assign(topic, partitions)
        state.jobs = [
            asyncio.create_task(self._publish(state), name=f"trs-publish-{batch.id}"),
            asyncio.create_task(self._watch_deadlines(state), name=f"trs-deadlines-{batch.id}"),
        ]

    def _prepare(self, reply: TopicSpec) -> None:
        """Check the request topic and create the reply topic. Blocking."""
        if not self._admin.exists(self._request_topic):
            raise TopicMissing(
                f"request topic {self._request_topic} does not exist: "
                f"create it with 'trs topics init --service {self._service}'"
            )
        self._admin.create(reply)

    def _reader_started(self) -> ReplyReader:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            self._reader = ReplyReader(
                reply_consumer_config(self._kafka), lambda results: loop.call_soon_threadsafe(self._on_results, results)
            )
            self._reader.start()
        return self._reader

    def _producer_started(self) -> Producer:
        if self._producer is None:
            self._producer = shared_producer(request_producer_config(self._kafka))
        return self._producer

    # Publishing -------------------------------------------------------------------------------

    async def _publish(self, state: _RemoteBatch) -> None:
        producer = self._producer_started()
        batch = state.batch
        queue = deque(batch.tasks)
        while queue:
            await self._slots.acquire()
            task = queue.popleft()
            if not batch.is_pending(task.id):
                self._slots.release()
                continue
            deadline = state.deadline(task)
            if datetime.now(UTC) >= deadline:
                self._slots.release()
                self._deliver(state, _error(task, ErrorCode.EXPIRED))
                continue
            envelope = TaskEnvelope(batch_id=batch.id, reply_topic=state.reply_topic, deadline=deadline, task=task)
            value, headers = encode_task(envelope)
            state.out.add(task.id)
            await produce(
                producer,
                self._request_topic,
                value,
                key=self._key(task),
                headers=headers,
                on_delivery=state.delivered,
                serve_reports=True,
            )
        # Serve the last delivery reports, so a failure is logged.
        await asyncio.to_thread(producer.flush, self._timeout)

    # Results ----------------------------------------------------------------------------------

    def _on_results(self, envelopes: list[ResultEnvelope]) -> None:
        for envelope in envelopes:
            state = self._batches.get(envelope.batch_id)
            if state is not None:
                self._deliver(state, envelope.result)

    def _deliver(self, state: _RemoteBatch, result: TaskResult) -> None:
        if state.batch.deliver(result) and result.task_id in state.out:
            state.out.discard(result.task_id)
            self._slots.release()
        if not state.batch.running:
            self._retire(state)

    def _retire(self, state: _RemoteBatch) -> None:
        """Stop reading a finished batch's reply topic: later copies of its results change nothing."""
        if state.unassigned is None and self._reader is not None:
            state.unassigned = self._reader.unassign(state.reply_topic, state.partitions)
            state.unassigned.add_done_callback(lambda _: setattr(state, "unassigned_at", time.monotonic()))

    def _release_all(self, state: _RemoteBatch) -> None:
        for _ in state.out:
            self._slots.release()
        state.out.clear()

    async def _watch_deadlines(self, state: _RemoteBatch) -> None:
        batch = state.batch
        for task in sorted(batch.tasks, key=lambda t: t.timeout):
            delay = batch.launched_at + task.timeout + self._grace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if batch.is_pending(task.id):
                self._deliver(state, _error(task, ErrorCode.NO_RESULT))

    # Cancel, close, cleanup -------------------------------------------------------------------

    async def cancel(self, batch: Batch) -> None:
        state = self._batches.get(batch.id)
        if state is None:
            return
        self._stop_jobs(state)
        longest = max(state.deadline(t) for t in batch.tasks) if batch.tasks else datetime.now(UTC)
        value, headers = encode_cancel(CancelEnvelope(batch_id=batch.id, deadline=longest))
        producer = self._producer_started()
        refused: list[str] = []
        delivered = _errors_into(refused)
        await produce(
            producer, CONTROL_TOPIC, value, key=batch.id, headers=headers, on_delivery=delivered, serve_reports=True
        )
        undelivered = await asyncio.to_thread(producer.flush, self._timeout)
        batch.fail_pending(ErrorCode.CANCELLED)
        self._release_all(state)
        self._retire(state)
        if refused:
            raise BrokerUnavailable(
                f"the cancel order of batch {batch.id} was refused: {refused[0]}; its queued tasks may still run"
            )
        if undelivered:
            raise BrokerUnavailable(
                f"the cancel order of batch {batch.id} was not acknowledged within {self._timeout:g} s; "
                "its queued tasks may still run"
            )

    async def close(self, batch: Batch) -> None:
        if batch.running:
            await self.cancel(batch)
        state = self._batches.pop(batch.id, None)
        if state is None:
            return
        self._stop_jobs(state)
        self._release_all(state)
        self._retire(state)
        self._deletions[state.reply_topic] = asyncio.create_task(self._delete_when_settled(state))

    async def _delete_when_settled(self, state: _RemoteBatch) -> None:
        """Delete the reply topic once no fetch of the reply reader can name it any more.

        librdkafka (2.5 and later) can crash on a fetch response for a partition of a topic it
        no longer knows when the broker adds a leader hint to the partition's error, as the
        embedded broker does for a deleted topic. So the topic goes only once fetches sent before
        the reader let go of it have had ample time to come back; ``close`` doesn't wait for that.
        """
        await self._settle(state)
        await self._delete([state.reply_topic])
        self._deletions.pop(state.reply_topic, None)

    async def _delete(self, topics: list[str]) -> None:
        try:
            await asyncio.to_thread(self._admin.delete, topics)
        except (KafkaException, BrokerUnavailable) as exc:
            # Left to 'trs topics gc', which knows from a topic's name when its batch expired.
            log.warning("could not delete reply topics %s: %s", ", ".join(topics), exc)

    @staticmethod
    async def _settle(state: _RemoteBatch) -> None:
        """Wait until ``UNASSIGN_SETTLE`` seconds have passed since the reader let go of the topic."""
        if state.unassigned is None:
            return
        with contextlib.suppress(KafkaException, CancelledError):
            await asyncio.wrap_future(state.unassigned)
        waited = time.monotonic() - (state.unassigned_at or time.monotonic())
        if waited < UNASSIGN_SETTLE:
            await asyncio.sleep(UNASSIGN_SETTLE - waited)

    @staticmethod
    def _stop_jobs(state: _RemoteBatch) -> None:
        for job in state.jobs:
            job.cancel()

    async def alive(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._admin.exists, CONTROL_TOPIC), timeout)
        except (BrokerUnavailable, TimeoutError):
            return False
        return True

    def set_security(self, tls: TlsConfig) -> None:
        raise UsageError(
            "in remote mode TLS to the targets is the workers' setting: start trs-worker with "
            "--ca-bundle, --client-cert and --client-key (or TRS_ENGINE_* variables)"
        )

    async def aclose(self) -> None:
        for state in list(self._batches.values()):
            self._stop_jobs(state)
        jobs = [job for state in self._batches.values() for job in state.jobs]
        jobs += self._deletions.values()
        for deletion in self._deletions.values():
            deletion.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*jobs, return_exceptions=True)
        self._batches.clear()
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.to_thread(reader.close)
        # The reader is closed, so nothing fetches these any more: they can go at once.
        doomed, self._deletions = list(self._deletions), {}
        if doomed:
            await self._delete(doomed)
        producer, self._producer = self._producer, None
        if producer is not None:
            # Shared with other runners: delivered, not closed.
            await asyncio.to_thread(producer.flush, self._timeout)
        # Destroying the handle waits for librdkafka's threads, so not on the event loop.
        await asyncio.to_thread(self._admin.close)


def _task_key(task: Task) -> str:
    return str(task.id)


def _host_key(task: Task) -> str:
    # The host and port only: a key is shown by every Kafka tool, and user info may hold a password.
    return urlsplit(task.request.url).netloc.rpartition("@")[2]


def _error(task: Task, code: ErrorCode) -> TaskResult:
    return error_result(task, code)


def _errors_into(errors: list[str]) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback that keeps the text of a failed delivery in ``errors``."""

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error.str())

    return delivered
