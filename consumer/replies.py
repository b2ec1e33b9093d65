"""What the worker produces: results to reply topics and bad messages to the dead-letter topic.

A record's offset is marked done only when the broker has acknowledged everything produced for it
(the delivery report), so a commit never passes a result that could still be lost.

The worker never creates a topic: its producer has ``allow.auto.create.topics`` off, and before
it produces to a reply topic it checks that the topic exists. A missing reply topic means its
client has closed the batch; the result is counted as dropped and the offset is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.fetcher import Record
from consumer.offsets import OffsetTracker
from shared.errors import ErrorCode, InvalidEnvelope
from shared.metrics import WORKER_DLQ_RECORDS, WORKER_PRODUCE_ERRORS, WORKER_RESULTS_DROPPED
from shared.models import ResultEnvelope, TaskError, TaskResult
from shared.wire import DLQ_TOPIC, batch_of_reply_topic, dead_letter_headers, encode_result

__all__ = ["Replies", "ReplyTopics"]

log = logging.getLogger(__name__)

#: Seconds a reply topic seen to exist is trusted before it is looked up again.
EXISTS_TTL = 1.0
#: Seconds a reply topic seen missing stays missing: a batch's topic never comes back.
MISSING_TTL = 300.0
#: Seconds one metadata lookup may take.
LOOKUP_TIMEOUT = 5.0
#: Seconds to wait when the producer's local queue is full.
QUEUE_FULL_BACKOFF = 0.005
#: Reply topics whose drop was logged; past this many the memory starts over.
MAX_REMEMBERED_DROPS = 10_000
#: Delivery errors that mean the reply topic is gone: the client closed its batch.
_TOPIC_GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


class ReplyTopics:
    """Whether reply topics exist, from cached metadata lookups that run off the event loop."""

    def __init__(self, producer: Producer, clock: Callable[[], float] = time.monotonic) -> None:
        self._producer = producer
        self._clock = clock
        self._known: dict[str, tuple[bool, float]] = {}
        self._lookups: dict[str, asyncio.Future[bool]] = {}

    def known(self, topic: str) -> bool | None:
        """Whether ``topic`` exists, from a lookup recent enough to trust; ``None`` when there is none."""
        known = self._known.get(topic)
        if known is None:
            return None
        exists, checked = known
        return exists if self._clock() - checked < (EXISTS_TTL if exists else MISSING_TTL) else None

    async def exists(self, topic: str) -> bool:
        known = self.known(topic)
        if known is not None:
            return known
        lookup = self._lookups.get(topic)
        if lookup is None:
            # One lookup per topic at a time, however many results wait on it.
            lookup = asyncio.get_running_loop().run_in_executor(None, self._lookup, topic)
            self._lookups[topic] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(topic, None))
        exists = await asyncio.shield(lookup)
        self._known[topic] = (exists, self._clock())
        return exists

    def _lookup(self, topic: str) -> bool:
        try:
            metadata = self._producer.list_topics(topic, timeout=LOOKUP_TIMEOUT)
        except KafkaException as exc:
            # Unknown is not missing: produce, and let the delivery report tell.
            log.warning("metadata lookup of %s failed: %s", topic, exc)
            return True
        found = metadata.topics.get(topic)
        return (found is not None) and found.error is None

    def forget_batch(self, batch_id: str) -> None:
        """Drop what is known of ``batch_id``'s reply topic: its client may be deleting it."""
        for topic in [t for t in self._known if batch_of_reply_topic(t) == batch_id]:
            self._known.pop(topic, None)


class _Acks:
    """Counts the delivery reports one record still waits for; the last one marks it done."""

    __slots__ = ("epoch", "key", "offset", "remaining", "tracker")

    def __init__(self, tracker: OffsetTracker, record: Record, remaining: int) -> None:
        self.tracker = tracker
        self.key = record.key
        self.offset = record.offset
        self.epoch = record.epoch
        self.remaining = remaining

    def done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.tracker.mark_done(self.key, self.offset, self.epoch)


class Replies:
    """Produces results and dead letters, and marks each record done once they are acknowledged."""

    def __init__(
        self,
        *,
        producer: Producer,
        tracker: OffsetTracker,
        topics: ReplyTopics,
        worker_name: str,
        max_message_bytes: int,
    ) -> None:
        self._producer = producer
        self._tracker = tracker
        self._topics = topics
        self._worker_name = worker_name
        self._max_message_bytes = max_message_bytes
        self._dropped_topics: set[str] = set()

    async def send_result(self, record: Record, batch_id: str, reply_topic: str, result: TaskResult) -> None:
        """Produce ``result`` to ``reply_topic``; the record is done once the broker has it."""
        acks = _Acks(self._tracker, record, 1)
        # Nearly always known, so the lookup's coroutine is only made when it isn't.
        exists = self._topics.known(reply_topic)
        if exists is None:
            exists = await self._topics.exists(reply_topic)
        if not exists:
            self._drop(reply_topic)
            acks.done()
            return
        value, headers = self._encode(batch_id, result)
        if not self._try_produce(reply_topic, value, headers, str(result.task_id).encode(), acks):
            await self._produce(reply_topic, value, headers, str(result.task_id).encode(), acks)

    async def dead_letter(self, record: Record, error: InvalidEnvelope) -> None:
        """Send a bad message to the dead-letter topic, and tell its client when that can be read."""
        message = record.message
        reply = await self._invalid_task_reply(error)
        acks = _Acks(self._tracker, record, 2 if reply is not None else 1)
        headers = dead_letter_headers(
            error.reason, topic=record.key[0], partition=record.key[1], offset=record.offset, original=message.headers()
        )
        log.warning("sent %s[%d]@%d to %s: %s", record.key[0], record.key[1], record.offset, DLQ_TOPIC, error.reason)
        WORKER_DLQ_RECORDS.inc()
        await self._produce(DLQ_TOPIC, message.value() or b"", headers, message.key(), acks)
        if reply is not None:
            topic, value, result_headers, key = reply
            await self._produce(topic, value, result_headers, key, acks)

    async def _invalid_task_reply(
        self, error: InvalidEnvelope
    ) -> tuple[str, bytes, list[tuple[str, str | bytes | None]], bytes] | None:
        if (error.reply_topic is None) or (error.task_id is None):
            return None
        batch_id = batch_of_reply_topic(error.reply_topic)
        if batch_id is None or not await self._topics.exists(error.reply_topic):
            return None
        result = TaskResult.model_validate({"task_id": error.task_id, "error": TaskError.of(ErrorCode.INVALID_TASK)})
        value, headers = self._encode(batch_id, result)
        return error.reply_topic, value, headers, error.task_id.encode()

    def _encode(self, batch_id: str, result: TaskResult) -> tuple[bytes, list[tuple[str, str | bytes | None]]]:
        value, headers = encode_result(ResultEnvelope(batch_id=batch_id, result=result, worker=self._worker_name))
        if len(value) > self._max_message_bytes:
            # Kafka would refuse it; the client still gets an outcome.
            log.warning("result of task %s is %d bytes, over the message limit", result.task_id, len(value))
            too_large = TaskResult(
                task_id=result.task_id,
                error=TaskError.of(ErrorCode.RESPONSE_TOO_LARGE),
                attempts=result.attempts,
                elapsed=result.elapsed,
            )
            value, headers = encode_result(
                ResultEnvelope(batch_id=batch_id, result=too_large, worker=self._worker_name)
            )
        return value, headers

    async def _produce(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        key: bytes | str | None,
        acks: _Acks,
    ) -> None:
        while not self._try_produce(topic, value, headers, key, acks):  # noqa: ASYNC110
            # The local queue is full; the worker serves delivery reports meanwhile.
            await asyncio.sleep(QUEUE_FULL_BACKOFF)

    def _try_produce(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, str | bytes | None]],
        key: bytes | str | None,
        acks: _Acks,
    ) -> bool:
        """Hand one record to the producer; ``False`` when its local queue is full."""
        try:
            self._producer.produce(
                topic, value=value, key=key, headers=headers, on_delivery=partial(self._delivered, acks)
            )
        except BufferError:
            return False
        except KafkaException as exc:
            log.error("could not produce to %s: %s", topic, exc)
            WORKER_PRODUCE_ERRORS.inc()
            acks.done()
        return True

    def _delivered(self, acks: _Acks, error: KafkaError | None, message: Message) -> None:
        if error is None:
            acks.done()
        elif error.code() in _TOPIC_GONE:
            self._drop(message.topic() or "")
            acks.done()
        else:
            # librdkafka retried until message.timeout.ms. The offset stays incomplete, so the
            # commit holds below it and the task runs again after the partition moves on.
            log.error("delivery to %s failed: %s", message.topic(), error.str())
            WORKER_PRODUCE_ERRORS.inc()

    def _drop(self, topic: str) -> None:
        WORKER_RESULTS_DROPPED.inc()
        if topic not in self._dropped_topics:
            if len(self._dropped_topics) >= MAX_REMEMBERED_DROPS:
                self._dropped_topics.clear()
            self._dropped_topics.add(topic)
            log.debug("reply topic %s is gone, its client closed the batch; dropping its results", topic)
