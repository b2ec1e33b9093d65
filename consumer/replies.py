"""What the worker produces: results to reply topics and bad messages to the dead-letter topic.

A record's offset is marked done only when the broker has acknowledged everything produced for it
(the delivery report), so a commit never passes a result that could still be lost. A record the
producer refuses, or whose delivery fails, is logged and counted and stays incomplete: the commit
holds below it, and the partition's next owner runs it again. A dead-letter record is kept within
the worker's message limit (see ``shared.wire.dead_letter_record``), so no message is too big for it.

The worker never creates a topic: its producer has ``allow.auto.create.topics`` off, and before
it produces to a reply topic it checks that the topic exists. A missing reply topic means its
client has closed the batch; the result is counted as dropped and the offset is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.fetcher import Record
from consumer.metrics import WORKER_DLQ_RECORDS, WORKER_PRODUCE_ERRORS, WORKER_RESULTS_DROPPED
from consumer.offsets import OffsetTracker
from shared.errors import ErrorCode, InvalidEnvelope
from shared.models import TaskEnvelope, TaskError, TaskResult
from shared.producing import produce, try_produce
from shared.wire import DLQ_TOPIC, KafkaHeaders, batch_of_reply_topic, dead_letter_record, encode_result_of

__all__ = ["DeadLetter", "Replies", "ReplyTopics"]

log = logging.getLogger(__name__)

#: Seconds a reply topic seen to exist is trusted before it is looked up again.
EXISTS_TTL = 1.0
#: Seconds a reply topic seen missing stays missing: a batch's topic never comes back.
MISSING_TTL = 300.0
#: Seconds one metadata lookup may take.
LOOKUP_TIMEOUT = 5.0
#: Most reply topics remembered as existing, as missing, or as dropped; the oldest go first.
MAX_REMEMBERED_TOPICS = 10_000
#: Delivery errors that mean the reply topic is gone: the client closed its batch.
_TOPIC_GONE = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC})


class _Expiring:
    """Topics remembered for ``ttl`` seconds each, at most ``cap`` of them; the oldest go first.

    Insertion order is the order of the times, so whatever expired is at the front.
    """

    def __init__(self, ttl: float, cap: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._cap = cap
        self._clock = clock
        self._since: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, topic: str) -> bool:
        since = self._since.get(topic)
        return (since is not None) and self._clock() - since < self._ttl

    def __len__(self) -> int:
        return len(self._since)

    def age(self, topic: str) -> float | None:
        """Seconds since ``topic`` was added, while it is remembered; else ``None``."""
        since = self._since.get(topic)
        if since is None:
            return None
        age = self._clock() - since
        return age if age < self._ttl else None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._since))

    def add(self, topic: str) -> None:
        now = self._clock()
        self._since.pop(topic, None)
        self._since[topic] = now
        since = self._since
        while len(since) > self._cap or now - next(iter(since.values())) >= self._ttl:
            since.popitem(last=False)

    def discard(self, topic: str) -> None:
        self._since.pop(topic, None)


class ReplyTopics:
    """Whether reply topics exist, from cached metadata lookups that run off the event loop.

    What it knows is bounded: a topic seen to exist is forgotten after ``EXISTS_TTL``, one seen
    missing after ``MISSING_TTL``, and neither memory holds more than ``MAX_REMEMBERED_TOPICS``.
    """

    def __init__(self, producer: Producer, clock: Callable[[], float] = time.monotonic) -> None:
        self._producer = producer
        self._existing = _Expiring(EXISTS_TTL, MAX_REMEMBERED_TOPICS, clock)
        self._missing = _Expiring(MISSING_TTL, MAX_REMEMBERED_TOPICS, clock)
        self._lookups: dict[str, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        """How many topics it remembers."""
        return len(self._existing) + len(self._missing)

    def known(self, topic: str) -> bool | None:
        """Whether ``topic`` exists, from a lookup recent enough to trust; ``None`` when there is none.

        Past half its ``EXISTS_TTL``, a topic seen to exist is looked up again in the background,
        so a busy batch's results never all wait for a lookup when the answer expires. Call it on
        the event loop.
        """
        age = self._existing.age(topic)
        if age is not None:
            if age >= EXISTS_TTL / 2 and topic not in self._lookups:
                self._look_up(topic)
            return True
        if topic in self._missing:
            return False
        return None

    def refreshing(self, topic: str) -> bool:
        """Whether a lookup of ``topic`` is under way."""
        return topic in self._lookups

    async def exists(self, topic: str) -> bool:
        known = self.known(topic)
        if known is not None:
            return known
        # One lookup per topic at a time, however many results wait on it.
        lookup = self._lookups.get(topic) or self._look_up(topic)
        return await asyncio.shield(lookup)

    def _look_up(self, topic: str) -> asyncio.Future[bool]:
        lookup = asyncio.get_running_loop().run_in_executor(None, self._lookup, topic)
        self._lookups[topic] = lookup
        lookup.add_done_callback(partial(self._looked_up, topic))
        return lookup

    def _looked_up(self, topic: str, lookup: asyncio.Future[bool]) -> None:
        self._lookups.pop(topic, None)
        if lookup.cancelled() or lookup.exception() is not None:
            return
        exists = lookup.result()
        (self._missing if exists else self._existing).discard(topic)
        (self._existing if exists else self._missing).add(topic)

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
        for memory in (self._existing, self._missing):
            for topic in memory:
                if batch_of_reply_topic(topic) == batch_id:
                    memory.discard(topic)


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """Why a record goes to the dead-letter topic, and what its client is told when that can be read.

    The client gets an error result with ``code`` when ``reply_topic`` and ``task_id`` are known
    and the topic exists; ``batch_id`` defaults to the one in the reply topic's name.
    """

    reason: str
    code: ErrorCode = ErrorCode.INVALID_TASK
    reply_topic: str | None = None
    task_id: str | None = None
    batch_id: str | None = None

    @classmethod
    def invalid(cls, error: InvalidEnvelope) -> DeadLetter:
        """The dead letter of a message that is not a valid task."""
        return cls(reason=error.reason, reply_topic=error.reply_topic, task_id=error.task_id)

    @classmethod
    def internal(cls, exc: BaseException, envelope: TaskEnvelope | None) -> DeadLetter:
        """The dead letter of a record whose handling raised ``exc``; its client is told if the task was read."""
        # The exception's type only: its text may carry what the task carries.
        reason = f"internal: {type(exc).__name__} while handling the record"
        if envelope is None:
            return cls(reason=reason, code=ErrorCode.INTERNAL)
        return cls(
            reason=reason,
            code=ErrorCode.INTERNAL,
            reply_topic=envelope.reply_topic,
            task_id=str(envelope.task.id),
            batch_id=envelope.batch_id,
        )


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._tracker = tracker
        self._topics = topics
        self._worker_name = worker_name
        self._max_message_bytes = max_message_bytes
        #: Reply topics whose drop was logged lately, so each is logged once.
        self._dropped_topics = _Expiring(MISSING_TTL, MAX_REMEMBERED_TOPICS, clock)

    def produce_result(self, record: Record, batch_id: str, reply_topic: str, result: TaskResult) -> bool:
        """Produce ``result`` to ``reply_topic`` without waiting, as nearly always happens; ``False``
        when that needs a wait (the topic is not known yet, or the producer's queue is full): call
        ``send_result`` then. The record is done once the broker has the result."""
        exists = self._topics.known(reply_topic)
        if exists is None:
            return False
        if not exists:
            self._drop(reply_topic)
            self._tracker.mark_done(record.key, record.offset, record.epoch)
            return True
        value, headers, key = self._encode(batch_id, result)
        try:
            on_delivery = partial(self._result_delivered, record)
            return try_produce(self._producer, reply_topic, value, key=key, headers=headers, on_delivery=on_delivery)
        except KafkaException as exc:
            self._produce_failed(record, reply_topic, exc)
            return True

    async def send_result(self, record: Record, batch_id: str, reply_topic: str, result: TaskResult) -> None:
        """Produce ``result`` to ``reply_topic``, waiting for the topic's lookup or for room if need be."""
        if not await self._topics.exists(reply_topic):
            self._drop(reply_topic)
            self._tracker.mark_done(record.key, record.offset, record.epoch)
            return
        value, headers, key = self._encode(batch_id, result)
        try:
            await produce(
                self._producer,
                reply_topic,
                value,
                key=key,
                headers=headers,
                on_delivery=partial(self._result_delivered, record),
            )
        except KafkaException as exc:
            self._produce_failed(record, reply_topic, exc)

    def _produce_failed(self, record: Record, reply_topic: str, exc: KafkaException) -> None:
        if _code(exc) in _TOPIC_GONE:
            self._drop(reply_topic)
            self._tracker.mark_done(record.key, record.offset, record.epoch)
            return
        log.error("could not produce the result of %s to %s: %s; it runs again", _where(record), reply_topic, exc)
        WORKER_PRODUCE_ERRORS.inc()

    async def dead_letter(self, record: Record, headers: KafkaHeaders | None, letter: DeadLetter) -> None:
        """Send a record, with the headers read from it (``None``: unreadable), to the dead-letter
        topic, and tell its client when that can be read.

        The record is done once the broker has acknowledged the dead letter (and the client's
        result, if there is one); only then is it counted in ``trs_worker_dlq_records_total``.
        """
        message = record.message
        reply = await self._error_reply(letter)
        acks = _Acks(self._tracker, record, 2 if reply is not None else 1)
        dead = dead_letter_record(
            letter.reason,
            topic=record.key[0],
            partition=record.key[1],
            offset=record.offset,
            value=message.value(),
            key=message.key(),
            original=headers,
            max_message_bytes=self._max_message_bytes,
        )
        log.warning("sending %s to %s: %s", _where(record), DLQ_TOPIC, letter.reason)
        try:
            await produce(
                self._producer,
                DLQ_TOPIC,
                dead.value,
                key=dead.key,
                headers=dead.headers,
                on_delivery=partial(self._dead_lettered, acks),
            )
        except KafkaException as exc:
            _dead_letter_failed(acks, str(exc))
        if reply is not None:
            topic, value, result_headers, key = reply
            try:
                await produce(
                    self._producer,
                    topic,
                    value,
                    key=key,
                    headers=result_headers,
                    on_delivery=partial(self._delivered, acks),
                )
            except KafkaException as exc:
                log.error("could not produce the %s result of %s to %s: %s", letter.code, _where(record), topic, exc)
                WORKER_PRODUCE_ERRORS.inc()

    async def _error_reply(
        self, letter: DeadLetter
    ) -> tuple[str, bytes, list[tuple[str, str | bytes | None]], bytes] | None:
        if (letter.reply_topic is None) or (letter.task_id is None):
            return None
        batch_id = letter.batch_id or batch_of_reply_topic(letter.reply_topic)
        if batch_id is None or not await self._topics.exists(letter.reply_topic):
            return None
        result = TaskResult(uuid.UUID(letter.task_id), error=TaskError.of(letter.code))
        value, headers, key = self._encode(batch_id, result)
        return letter.reply_topic, value, headers, key

    def _encode(self, batch_id: str, result: TaskResult) -> tuple[bytes, KafkaHeaders, bytes]:
        """A result record's value, headers and key (its task id)."""
        # The task id's text is both the key and a header: UUID.__str__ is Python code, so it runs once.
        key = str(result.task_id).encode()
        value, headers = encode_result_of(batch_id, result, self._worker_name, task_id=key)
        if len(value) > self._max_message_bytes:
            # Kafka would refuse it; the client still gets an outcome.
            log.warning("result of task %s is %d bytes, over the message limit", result.task_id, len(value))
            too_large = TaskResult(
                result.task_id,
                None,
                TaskError.of(ErrorCode.RESPONSE_TOO_LARGE),
                result.attempts,
                result.elapsed,
                result.labels,
            )
            value, headers = encode_result_of(batch_id, too_large, self._worker_name, task_id=key)
        return value, headers, key

    def _result_delivered(self, record: Record, error: KafkaError | None, message: Message) -> None:
        """A result's delivery report: the result is all its record waits for, so no ``_Acks`` is kept for it."""
        if (error is None) or self._topic_gone(error, message):
            self._tracker.mark_done(record.key, record.offset, record.epoch)

    def _delivered(self, acks: _Acks, error: KafkaError | None, message: Message) -> None:
        if (error is None) or self._topic_gone(error, message):
            acks.done()

    def _topic_gone(self, error: KafkaError, message: Message) -> bool:
        """Whether a failed delivery failed for want of its reply topic; any other failure is logged and counted."""
        if error.code() in _TOPIC_GONE:
            self._drop(message.topic() or "")
            return True
        # librdkafka retried until message.timeout.ms. The offset stays incomplete, so the
        # commit holds below it and the task runs again after the partition moves on.
        log.error("delivery to %s failed: %s", message.topic(), error.str())
        WORKER_PRODUCE_ERRORS.inc()
        return False

    def _dead_lettered(self, acks: _Acks, error: KafkaError | None, message: Message) -> None:
        if error is None:
            WORKER_DLQ_RECORDS.inc()
            acks.done()
        else:
            _dead_letter_failed(acks, error.str())

    def _drop(self, topic: str) -> None:
        WORKER_RESULTS_DROPPED.inc()
        if topic not in self._dropped_topics:
            self._dropped_topics.add(topic)
            log.debug("reply topic %s is gone, its client closed the batch; dropping its results", topic)


def _dead_letter_failed(acks: _Acks, error: str) -> None:
    # Even a missing trs-dlq is no reason to let the record go: it stays incomplete and runs again.
    log.error(
        "could not write %s[%d]@%d to %s: %s; it stays incomplete and runs again",
        acks.key[0],
        acks.key[1],
        acks.offset,
        DLQ_TOPIC,
        error,
    )
    WORKER_PRODUCE_ERRORS.inc()


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _where(record: Record) -> str:
    return f"{record.key[0]}[{record.key[1]}]@{record.offset}"
