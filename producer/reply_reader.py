"""The reply reader: one thread that reads every open batch's reply topic for a remote runner.

Reply topics are assigned, never subscribed, so a launch never waits on a consumer group join.
Assignments change on this thread too, between rounds: librdkafka's consumer calls may block
each other when made from two threads while one of them consumes. Each round blocks briefly for
the first message, then takes what is already fetched, because ``consume(n, timeout)`` would
otherwise wait out its whole timeout for a partial batch. Results are decoded here and handed to
the event loop in one call per round.

The reader also follows ``trs-control`` from its end, for release notices: ``trs topics gc``
names the reply topics it is about to delete, and the reader lets go of any it still reads. A
fetch for a topic deleted under a reader can crash librdkafka 2.5 and later (a broker's leader
hint on the fetch error, as the embedded broker sends, becomes a metadata update with no topic
name); a reader that let go of the topic 0.05 s before the deletion is safe (measured), and gc
waits much longer than that.

The reader notes each partition's offsets as it reads them, and reads again any it was shown past
before their records existed (see ``producer.reply_gaps``: the embedded broker can do that).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from producer.reply_gaps import OffsetGaps
from shared.errors import InvalidEnvelope
from shared.models import ResultEnvelope
from shared.wire import (
    CONTROL_KIND_RELEASE,
    CONTROL_TOPIC,
    control_kind,
    decode_release,
    decode_result,
    message_headers,
)

__all__ = ["ReplyReader"]

log = logging.getLogger(__name__)

#: Seconds one round waits for a first message. It bounds how long a new assignment waits, so
#: it is short; an idle round costs a few microseconds.
POLL_TIMEOUT = 0.005
#: Seconds an idle reader (no batch open) sleeps between looks at its commands.
IDLE_WAIT = 1.0
#: Seconds the metadata lookup of a new reply topic, or of ``trs-control``, may take.
METADATA_TIMEOUT = 5.0
#: Most messages taken in one round.
BATCH = 1000
#: Errors a deleted reply topic causes while its last fetches drain; not worth a warning.
_QUIET = frozenset({KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION})
#: Errors that mean no broker answered: the runner reports that itself, as its one line.
_NO_BROKER = frozenset({KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN})

_Command = tuple[Callable[[str, int], None], str, int, Future[None]]


class ReplyReader:
    """Reads assigned reply topics on a thread and passes decoded results to ``on_results``."""

    def __init__(self, config: dict[str, Any], on_results: Callable[[list[ResultEnvelope]], object]) -> None:
        self._consumer = Consumer({**config, "group.id": f"trs-client-{uuid.uuid4().hex}"})
        self._on_results = on_results
        self._stop = threading.Event()
        self._commands: deque[_Command] = deque()
        # Set when a command or the stop arrives, so an idle reader sleeps instead of polling.
        self._wake = threading.Event()
        #: The reply topics read now, and their partition counts. Only the thread touches it.
        self._held: dict[str, int] = {}
        self._gaps = OffsetGaps()
        self._following_control = False
        self._warned_control = False
        self._thread = threading.Thread(target=self._main, name="trs-reply-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def assign(self, topic: str, partitions: int) -> Future[None]:
        """Start reading ``topic``, a new reply topic, from its first message, at the next round."""
        return self._command(self._assign_new, topic, partitions)

    def _assign_new(self, topic: str, partitions: int) -> None:
        # A reply topic is new, so its first offset is 0: asking for "the beginning" would cost an
        # offset lookup, which librdkafka retries on a 500 ms timer while the topic's leader is
        # unknown. The metadata lookup first makes the leader known before the assignment.
        self._consumer.list_topics(topic, timeout=METADATA_TIMEOUT)
        self._consumer.incremental_assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self._held[topic] = partitions
        for partition in range(partitions):
            self._gaps.start(topic, partition, 0)
        if not self._following_control:
            self._follow_control()

    def prepare(self) -> Future[None]:
        """Start following ``trs-control`` now, so the first assignment need not wait for it."""
        return self._command(self._prepare, CONTROL_TOPIC, 0)

    def _prepare(self, topic: str, partitions: int) -> None:
        if not self._following_control:
            self._follow_control()

    def unassign(self, topic: str, partitions: int) -> Future[None]:
        """Stop reading ``topic``, at the next round; a topic the reader already let go of is no error."""
        return self._command(self._unassign, topic, partitions)

    def _unassign(self, topic: str, partitions: int) -> None:
        if self._held.pop(topic, None) is not None:
            self._consumer.incremental_unassign([TopicPartition(topic, p) for p in range(partitions)])
            self._gaps.forget(topic)

    def _command(self, call: Callable[[str, int], None], topic: str, partitions: int) -> Future[None]:
        done: Future[None] = Future()
        done.add_done_callback(_log_failure)
        self._commands.append((call, topic, partitions, done))
        self._wake.set()
        return done

    def _run_commands(self) -> None:
        while self._commands:
            call, topic, partitions, done = self._commands.popleft()
            # The caller may cancel its wait (a cleanup cancels pending deletions), but the
            # assignment must change all the same; only the answer is dropped then.
            waited_for = done.set_running_or_notify_cancel()
            try:
                call(topic, partitions)
            except Exception as exc:
                if waited_for:
                    done.set_exception(exc)
                else:
                    log.error("changing the reply topics' assignment failed: %s", exc)
            else:
                if waited_for:
                    done.set_result(None)

    def close(self) -> None:
        """Stop the thread and close the consumer. Blocks for up to one round."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        while self._commands:
            self._commands.popleft()[3].cancel()
        self._consumer.close()

    def _main(self) -> None:
        while not self._stop.is_set():
            self._run_commands()
            self._read_gaps_again()
            if not self._held:
                # Nothing to read: sleep until a command comes, rather than poll.
                self._wake.wait(IDLE_WAIT)
                self._wake.clear()
                continue
            try:
                messages = self._consumer.consume(1, POLL_TIMEOUT)
                if messages:
                    messages += self._consumer.consume(BATCH - 1, 0)
            except Exception:
                log.exception("reading replies failed")
                continue
            results = self._read(messages)
            if results:
                self._on_results(results)

    def _read_gaps_again(self) -> None:
        for topic, partition, offset in self._gaps.due():
            log.debug(
                "reading %s[%d] again from offset %d, which the broker showed a later record before",
                topic,
                partition,
                offset,
            )
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("could not read %s[%d] again from offset %d: %s", topic, partition, offset, exc)

    def _follow_control(self) -> None:
        """Read ``trs-control`` from its end, for release notices; tried at each assignment until it works."""
        partitions = self._control_partitions()
        ends = None if partitions is None else self._ends(partitions)
        if ends is not None:
            self._consumer.incremental_assign(ends)
            self._following_control = True
            for end in ends:
                self._gaps.start(CONTROL_TOPIC, end.partition, end.offset)

    def _control_partitions(self) -> list[int] | None:
        try:
            metadata = self._consumer.list_topics(CONTROL_TOPIC, timeout=METADATA_TIMEOUT)
        except KafkaException as exc:
            # A broker that doesn't answer at all is the runner's one error to report; this is tried again.
            if exc.args[0].code() not in _NO_BROKER:
                self._warn_once(f"could not look up {CONTROL_TOPIC}: {exc}")
            return None
        topic = metadata.topics.get(CONTROL_TOPIC)
        if topic is None or topic.error is not None:
            self._warn_once(f"{CONTROL_TOPIC} does not exist: create it with 'trs topics init'")
            return None
        return list(topic.partitions)

    def _ends(self, partitions: list[int]) -> list[TopicPartition] | None:
        """Each partition at its end as it is now: a notice published once the assignment is done is read.

        A notice is only ever about topics of batches that are running or over, so what came before is moot.
        """
        ends = []
        for partition in partitions:
            try:
                watermarks = self._consumer.get_watermark_offsets(
                    TopicPartition(CONTROL_TOPIC, partition), timeout=METADATA_TIMEOUT, cached=False
                )
            except KafkaException as exc:
                watermarks, problem = None, str(exc)
            else:
                problem = f"no answer within {METADATA_TIMEOUT:g} s"
            if watermarks is None:
                self._warn_once(f"could not look up the end of {CONTROL_TOPIC}: {problem}")
                return None
            ends.append(TopicPartition(CONTROL_TOPIC, partition, watermarks[1]))
        return ends

    def _warn_once(self, problem: str) -> None:
        if not self._warned_control:
            self._warned_control = True
            log.warning(
                "%s; until it is read, a reply topic deleted by 'trs topics gc' is not let go of first", problem
            )

    def _read(self, messages: list[Message]) -> list[ResultEnvelope]:
        results = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() not in _QUIET:
                    log.warning("reply topic error: %s", error.str())
                continue
            self._gaps.seen(message.topic(), message.partition(), message.offset())
            if message.topic() == CONTROL_TOPIC:
                self._on_control(message)
                continue
            headers = message_headers(message)
            if headers is None:
                log.warning("ignored a record on %s with unreadable headers", message.topic())
                continue
            try:
                results.append(decode_result(message.value(), headers))
            except InvalidEnvelope as exc:
                log.warning("ignored a bad record on %s: %s", message.topic(), exc.reason)
        return results

    def _on_control(self, message: Message) -> None:
        headers = message_headers(message)
        if headers is None or control_kind(headers) != CONTROL_KIND_RELEASE:
            return
        try:
            notice = decode_release(message.value(), headers)
        except InvalidEnvelope as exc:
            log.warning("ignored a bad release notice on %s: %s", CONTROL_TOPIC, exc.reason)
            return
        for topic in notice.topics:
            partitions = self._held.get(topic)
            if partitions is not None:
                log.warning(
                    "reply topic %s is about to be deleted while its batch runs; its open tasks will end no_result",
                    topic,
                )
                self._unassign(topic, partitions)


def _log_failure(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("changing the reply topics' assignment failed: %s", done.exception())
