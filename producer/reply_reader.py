"""The reply reader: one thread that reads every open batch's reply topic for a remote runner.

Reply topics are assigned, never subscribed, so a launch never waits on a consumer group join.
Assignments change on this thread too, between rounds: librdkafka's consumer calls may block
each other when made from two threads while one of them consumes. Each round blocks briefly for
the first message, then takes what is already fetched, because ``consume(n, timeout)`` would
otherwise wait out its whole timeout for a partial batch. Results are decoded here and handed to
the event loop in one call per round.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from shared.errors import InvalidEnvelope
from shared.models import ResultEnvelope
from shared.wire import decode_result

__all__ = ["ReplyReader"]

log = logging.getLogger(__name__)

#: Seconds one round waits for a first message. It bounds how long a new assignment waits, so
#: it is short; an idle round costs a few microseconds.
POLL_TIMEOUT = 0.005
#: Seconds an idle reader (no batch open) sleeps between looks at its commands.
IDLE_WAIT = 1.0
#: Seconds the metadata lookup of a new reply topic may take.
METADATA_TIMEOUT = 5.0
#: Most messages taken in one round.
BATCH = 1000
#: Errors a deleted reply topic causes while its last fetches drain; not worth a warning.
_QUIET = frozenset({KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION})


class ReplyReader:
    """Reads assigned reply topics on a thread and passes decoded results to ``on_results``."""

    def __init__(self, config: dict[str, Any], on_results: Callable[[list[ResultEnvelope]], object]) -> None:
        self._consumer = Consumer({**config, "group.id": f"trs-client-{uuid.uuid4().hex}"})
        self._on_results = on_results
        self._stop = threading.Event()
        self._commands: deque[tuple[Callable[[list[TopicPartition]], None], list[TopicPartition], Future[None]]] = (
            deque()
        )
        # Set when a command or the stop arrives, so an idle reader sleeps instead of polling.
        self._wake = threading.Event()
        self._assigned = 0
        self._thread = threading.Thread(target=self._main, name="trs-reply-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def assign(self, topic: str, partitions: int) -> Future[None]:
        """Start reading ``topic``, a new reply topic, from its first message, at the next round."""
        return self._command(self._assign_new, [TopicPartition(topic, p, 0) for p in range(partitions)])

    def _assign_new(self, partitions: list[TopicPartition]) -> None:
        # A reply topic is new, so its first offset is 0: asking for "the beginning" would cost an
        # offset lookup, which librdkafka retries on a 500 ms timer while the topic's leader is
        # unknown. The metadata lookup first makes the leader known before the assignment.
        self._consumer.list_topics(partitions[0].topic, timeout=METADATA_TIMEOUT)
        self._consumer.incremental_assign(partitions)
        self._assigned += len(partitions)

    def unassign(self, topic: str, partitions: int) -> Future[None]:
        """Stop reading ``topic``, at the next round."""
        return self._command(self._unassign, [TopicPartition(topic, p) for p in range(partitions)])

    def _unassign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.incremental_unassign(partitions)
        self._assigned -= len(partitions)

    def _command(self, call: Callable[[list[TopicPartition]], None], partitions: list[TopicPartition]) -> Future[None]:
        done: Future[None] = Future()
        done.add_done_callback(_log_failure)
        self._commands.append((call, partitions, done))
        self._wake.set()
        return done

    def _run_commands(self) -> None:
        while self._commands:
            call, partitions, done = self._commands.popleft()
            # The caller may cancel its wait (a cleanup cancels pending deletions), but the
            # assignment must change all the same; only the answer is dropped then.
            waited_for = done.set_running_or_notify_cancel()
            try:
                call(partitions)
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
            self._commands.popleft()[2].cancel()
        self._consumer.close()

    def _main(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            self._run_commands()
            if not self._assigned:
                # Nothing to read: sleep until a command comes, rather than poll.
                self._wake.wait(IDLE_WAIT)
                self._wake.clear()
                continue
            try:
                messages = consumer.consume(1, POLL_TIMEOUT)
                if messages:
                    messages += consumer.consume(BATCH - 1, 0)
            except Exception:
                log.exception("reading replies failed")
                continue
            results = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() not in _QUIET:
                        log.warning("reply topic error: %s", error.str())
                    continue
                try:
                    results.append(decode_result(message.value(), message.headers()))
                except InvalidEnvelope as exc:
                    log.warning("ignored a bad record on %s: %s", message.topic(), exc.reason)
            if results:
                self._on_results(results)


def _log_failure(done: Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("changing the reply topics' assignment failed: %s", done.exception())
