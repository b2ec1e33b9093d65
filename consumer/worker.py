"""The trs-worker: consume task messages, run them on the engine, produce each result.

``Worker.run`` reads top-down: start, then beat until told to stop, then drain. Work flows like this:

1. The fetcher thread (``consumer.fetcher``) consumes task messages in batches, tracks each offset
   as incomplete and hands the batch to the event loop's queue.
2. ``max_inflight`` runner coroutines take records from the queue. Each decodes its message,
   skips a cancelled batch's task, runs the task on the same engine local mode uses (the engine
   ends a task whose deadline has passed ``expired`` without sending it), and produces the
   result. A message that can't be decoded goes to the dead-letter topic. A cancel order on
   ``trs-control`` also cuts its batch's tasks in flight; they end ``cancelled``. An unexpected
   exception still ends its record (a dead letter, and an ``internal`` result when the task
   could be read), and the runner goes on with the next one.
3. When the broker acknowledges what was produced, the offset is done; the fetcher commits each
   partition up to its lowest incomplete offset. The acknowledgements (delivery reports) are served
   here on the event loop every few milliseconds: each one calls back into Python, and served from
   the fetcher thread every callback took the GIL from the event loop and handed it back.

When the queue holds ``max_inflight`` records the fetcher holds off until runners have taken half
of them, and if that lasts it pauses the partitions and goes on polling (see ``consumer.flow``).
On SIGTERM the worker stops fetching, gives the tasks in flight ``grace_period`` seconds, cuts the
rest (they end ``cancelled``), produces those results, commits and leaves the group.

Startup: brokers, topic operators and workers start in any order, so the health server comes
first, ``/healthz`` answers at once and ``/readyz`` says what the worker waits for (no broker, a
missing shared topic, not yet a member of its group). A missing broker or topic is waited for,
with a log line now and then, and never makes the worker exit, unless ``startup_timeout`` is set
and passes. After a stall longer than half the session timeout (the process was frozen), a
runner starts nothing until the fetcher knows the partition is still the worker's (see
``consumer.fetcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter

from consumer.cancels import CancelRegistry
from consumer.fetcher import Fetcher, FetcherConfig, Record
from consumer.flow import Backlog
from consumer.health import HealthServer, Probe
from consumer.kafka_config import consumer_config, control_config, producer_config, subscription
from consumer.metrics import (
    WORKER_INFLIGHT,
    WORKER_INTERNAL_ERRORS,
    WORKER_PARTITIONS_PAUSED,
    WORKER_TASKS_COMPLETED,
    WORKER_TASKS_RECEIVED,
)
from consumer.offsets import OffsetTracker, Ownership
from consumer.reminders import Reminder
from consumer.replies import DeadLetter, Replies, ReplyTopics
from consumer.settings import EngineSettings, WorkerSettings
from shared.engine import Engine, TargetAllowlist, TlsConfig
from shared.errors import BrokerUnavailable, ErrorCode, InvalidEnvelope, TopicMissing, TrsError
from shared.models import CancelEnvelope, TaskEnvelope, TaskResult, error_result
from shared.settings import KafkaSettings
from shared.task_decoder import TaskDecoder
from shared.wire import CONTROL_TOPIC, DLQ_TOPIC, KafkaHeaders, message_headers

__all__ = ["StartupTimeout", "Worker", "WorkerConfig"]

log = logging.getLogger(__name__)

#: Seconds between the event loop's heartbeats.
BEAT_INTERVAL = 1.0
#: A heartbeat older than this makes ``/healthz`` fail.
STALE_AFTER = 15.0
#: Seconds the final flush of results may take.
FLUSH_TIMEOUT = 10.0
#: Seconds one look for the broker and the shared topics may take at startup, and between looks.
KAFKA_LOOKUP_TIMEOUT = 1.0
KAFKA_RETRY = 1.0
#: Seconds between log lines while the worker waits for its broker or its topics.
WAIT_LOG_EVERY = 30.0
#: Seconds a runner holding a record in doubt waits for news before it asks again anyway.
HOLD_RECHECK = 1.0
#: The ``/readyz`` reason until the worker joins its group.
NOT_A_MEMBER = "not yet a member of the consumer group"
#: Seconds the backlog may stay short of room before the partitions pause (see ``consumer.flow``).
PAUSE_AFTER = 0.5
#: Seconds between servings of the producer's delivery reports while results are unacknowledged,
#: and while none are. Reports only gate commits, which come every ``commit_interval``.
DELIVERY_INTERVAL = 0.005
DELIVERY_IDLE_INTERVAL = 0.1
#: Seconds a runner waits after a failure between records before it takes the next one.
RUNNER_RESTART_DELAY = 0.1


class StartupTimeout(TrsError):
    """The worker was not ready within its opt-in startup deadline."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything the worker is configured with."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)


class Worker:
    """One worker process's work; ``run`` it once."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.name = config.worker.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue()
        self._busy = 0
        self._draining = False
        self._failure: BaseException | None = None
        self._last_beat = time.monotonic()
        self._started_at = self._last_beat
        #: What the worker waits for before it can start, for ``/readyz``; ``None`` once it started.
        #: Until the first look for the broker is back, all that is known is that it isn't a member.
        self._waiting_for: str | None = NOT_A_MEMBER
        self._startup_failure: StartupTimeout | None = None
        self._ready_once = False
        # A member is dropped one session timeout after its last heartbeat, which may precede the
        # stall by a heartbeat interval or more: half the timeout leaves room for that.
        self._tracker = OffsetTracker(stall_after=config.worker.session_timeout_ms / 1000 / 2)
        #: Set, and replaced, whenever held records may have an answer; see ``_wait_for_ownership``.
        self._ownership_changed = asyncio.Event()
        self._backlog = Backlog(config.worker.max_inflight)
        self._cancels = CancelRegistry()
        self._decoder = TaskDecoder(max_message_bytes=config.worker.max_message_bytes)
        #: The last deadline read and its ``time.time()`` value: a batch's tasks share one deadline object.
        self._last_deadline: tuple[datetime | None, float] = (None, 0.0)
        self._counts: dict[str, int] = {}
        #: The runners busy with each batch's tasks, so a cancel order can cut them.
        self._running: dict[str, set[asyncio.Task[Any]]] = {}

    def stop(self) -> None:
        """Ask the worker to drain and exit, as SIGTERM does."""
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; returns the process exit code.

        Raises ``BrokerUnavailable``, ``TopicMissing`` or ``StartupTimeout`` when the optional
        startup deadline passes first.
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        if not await self._start():
            log.info("worker %s stopped before it started", self.name)
            return 0
        log.info("worker %s started: group %s, topics %s", self.name, self.config.worker.group_id, self._topics)
        try:
            while not self._stop.is_set():
                self._last_beat = time.monotonic()
                self._cancels.prune()
                self._check_startup_deadline()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), BEAT_INTERVAL)
        finally:
            await self._drain()
        if self._startup_failure is not None:
            raise self._startup_failure
        return 1 if self._failure is not None else 0

    async def _start(self) -> bool:
        """Serve the probes, wait for Kafka, then start fetching and running; ``False`` if stopped first."""
        worker = self.config.worker
        self._health = HealthServer(worker.host, worker.port, self.probe)
        self._health.start()
        try:
            if await self._wait_for_kafka():
                self._start_work()
                # Only now, with the fetcher there, does the probe ask it.
                self._waiting_for = None
                return True
        except BaseException:
            self._health.stop()
            raise
        self._health.stop()
        return False

    async def _wait_for_kafka(self) -> bool:
        """Wait until the broker answers and the shared topics exist; ``False`` if stopped first."""
        kafka, worker = self.config.kafka, self.config.worker
        self._producer = Producer(producer_config(kafka, worker))
        reminder = Reminder(WAIT_LOG_EVERY)
        waited = False
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                self._last_beat = time.monotonic()
                look = asyncio.ensure_future(asyncio.to_thread(self._check_topics_exist))
                await asyncio.wait({look, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not look.done():
                    # Stopped; the look ends by itself within its timeout.
                    return False
                missing = look.result()
                if missing == []:
                    if waited:
                        log.info("the broker answers and the shared topics exist: starting")
                    return True
                reason = self._missing_reason(missing)
                if reason != self._waiting_for:
                    # Something changed (a topic appeared, or the broker): say so at once.
                    reminder.reset()
                self._waiting_for = reason
                if self._startup_deadline_passed():
                    raise self._startup_error(missing)
                if reminder.due():
                    waited = True
                    log.warning(
                        "waiting for Kafka: %s (%.0f s so far); the worker starts once it is there",
                        self._waiting_for,
                        time.monotonic() - self._started_at,
                    )
                await asyncio.wait({stopped}, timeout=KAFKA_RETRY)
            return False
        finally:
            stopped.cancel()

    def _start_work(self) -> None:
        kafka, worker, engine = self.config.kafka, self.config.worker, self.config.engine
        self._topics = subscription(worker)
        self._engine = Engine(
            transport=engine.transport,
            tls=TlsConfig(
                ca_bundle=engine.ca_bundle,
                client_cert=engine.client_cert,
                client_key=engine.client_key,
                insecure=engine.insecure,
            ),
            max_response_bytes=engine.max_response_bytes,
            allowlist=TargetAllowlist(engine.allowed_targets),
        )
        self._reply_topics = ReplyTopics(self._producer)
        self._replies = Replies(
            producer=self._producer,
            tracker=self._tracker,
            topics=self._reply_topics,
            worker_name=self.name,
            max_message_bytes=worker.max_message_bytes,
        )
        loop = asyncio.get_running_loop()
        self._fetcher = Fetcher(
            consumer_config=consumer_config(kafka, worker),
            control_config=control_config(kafka, worker),
            tracker=self._tracker,
            config=FetcherConfig(
                topics=self._topics,
                consume_batch=worker.consume_batch,
                commit_interval=worker.commit_interval,
                # While it holds, the fetcher doesn't poll; stay far below the interval that would cost the group.
                pause_after=min(PAUSE_AFTER, worker.max_poll_interval_ms / 1000 / 10),
                # Nor while a revoke waits; that wait is for tasks that would otherwise run twice.
                revoke_wait=min(worker.grace_period, worker.max_poll_interval_ms / 1000 / 2),
            ),
            backlog=self._backlog,
            on_records=lambda records: loop.call_soon_threadsafe(self._enqueue, records),
            on_cancel=lambda order: loop.call_soon_threadsafe(self._cancel, order),
            on_failure=lambda exc: loop.call_soon_threadsafe(self._fetcher_failed, exc),
            on_ownership=lambda: loop.call_soon_threadsafe(self._ownership_settled),
        )
        WORKER_INFLIGHT.set_function(lambda: self._busy)
        WORKER_PARTITIONS_PAUSED.set_function(lambda: 1 if self._fetcher.paused else 0)
        self._fetcher.start()
        self._runners = [asyncio.create_task(self._runner()) for _ in range(worker.max_inflight)]
        self._deliveries = asyncio.create_task(self._serve_deliveries())
        self._deliveries.add_done_callback(self._deliveries_ended)

    def _check_topics_exist(self) -> list[str] | None:
        """The shared topics that are missing, or ``None`` when no broker answered. Blocks."""
        try:
            metadata = self._producer.list_topics(timeout=KAFKA_LOOKUP_TIMEOUT)
        except KafkaException:
            # librdkafka hands over its log lines, which say why no broker answered, only when polled.
            self._producer.poll(0)
            return None
        return [topic for topic in (DLQ_TOPIC, CONTROL_TOPIC) if topic not in metadata.topics]

    def _missing_reason(self, missing: list[str] | None) -> str:
        if missing is None:
            return f"no broker answered at {self.config.kafka.bootstrap_servers}"
        return f"topic {missing[0]} missing: create it with 'trs topics init'"

    def _startup_error(self, missing: list[str] | None) -> TrsError:
        servers, timeout = self.config.kafka.bootstrap_servers, self.config.worker.startup_timeout
        if missing is None:
            return BrokerUnavailable(f"no Kafka broker answered at {servers} within {timeout:g} s")
        return TopicMissing(f"topic {missing[0]} does not exist at {servers}: create it with 'trs topics init'")

    def _startup_deadline_passed(self) -> bool:
        timeout = self.config.worker.startup_timeout
        return (timeout is not None) and time.monotonic() - self._started_at > timeout

    def _check_startup_deadline(self) -> None:
        """Stop with ``StartupTimeout`` if the worker is not ready by its deadline; only ever opt-in."""
        if self._ready_once:
            return
        reason = self._not_ready_reason()
        if reason is None:
            self._ready_once = True
        elif self._startup_deadline_passed():
            self._startup_failure = StartupTimeout(
                f"not ready within {self.config.worker.startup_timeout:g} s: {reason}"
            )
            self.stop()

    def _not_ready_reason(self) -> str | None:
        """Why the worker is not ready: Kafka, the control topic, or the group; ``None`` if it is."""
        if self._waiting_for is not None:
            return self._waiting_for
        if self._fetcher.control_problem is not None:
            return self._fetcher.control_problem
        return None if self._fetcher.joined else NOT_A_MEMBER

    def probe(self) -> Probe:
        """The answers of ``/healthz`` and ``/readyz``; called from the health server's thread."""
        now = time.monotonic()
        if self._failure is not None:
            return Probe(healthy=False, ready=False, reason="the fetcher thread failed")
        if now - self._last_beat > STALE_AFTER:
            return Probe(healthy=False, ready=False, reason="the event loop is stuck")
        if (self._waiting_for is None) and now - self._fetcher.last_beat > STALE_AFTER:
            return Probe(healthy=False, ready=False, reason="the fetcher thread is stuck")
        if self._draining:
            return Probe(healthy=True, ready=False, reason="draining")
        reason = self._not_ready_reason()
        if reason is not None:
            return Probe(healthy=True, ready=False, reason=reason)
        return Probe(healthy=True, ready=True)

    # Called on the event loop by the fetcher thread -------------------------------------------

    def _enqueue(self, records: list[Record]) -> None:
        WORKER_TASKS_RECEIVED.inc(len(records))
        put = self._queue.put_nowait
        for record in records:
            put(record)

    def _cancel(self, order: CancelEnvelope) -> None:
        self._cancels.add(order)
        self._reply_topics.forget_batch(order.batch_id)
        running = self._running.get(order.batch_id, ())
        for runner in running:
            runner.cancel()
        log.info(
            "batch %s cancelled: %d tasks in flight cut; its queued tasks will not run", order.batch_id, len(running)
        )

    def _fetcher_failed(self, exc: BaseException) -> None:
        self._failure = exc
        self._stop.set()

    # Ownership after a stall --------------------------------------------------------------

    def _ownership_settled(self) -> None:
        """Wake the runners holding records: ownership was proved, or partitions were revoked."""
        changed, self._ownership_changed = self._ownership_changed, asyncio.Event()
        changed.set()

    async def _wait_for_ownership(self, record: Record) -> bool:
        """Hold ``record`` while a stall leaves its partition's ownership in doubt; whether it may start.

        A record that doesn't start is not done, so the commit stays below it: it runs here once
        ownership is proved, or at the partition's next owner.
        """
        while not self._draining:
            ownership = self._tracker.begin(record.key, record.epoch, record.offset)
            if ownership is not Ownership.IN_DOUBT:
                return ownership is Ownership.OWNED
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ownership_changed.wait(), HOLD_RECHECK)
        return False

    # Delivery reports -------------------------------------------------------------------------

    async def _serve_deliveries(self) -> None:
        """Serve the producer's delivery reports, which mark offsets done, until cancelled."""
        producer = self._producer
        while True:
            producer.poll(0)
            await asyncio.sleep(DELIVERY_INTERVAL if len(producer) else DELIVERY_IDLE_INTERVAL)

    def _deliveries_ended(self, task: asyncio.Task[None]) -> None:
        # Without delivery reports no offset is ever done again: stop rather than stall.
        if not task.cancelled() and task.exception() is not None:
            log.error("serving delivery reports failed", exc_info=task.exception())
            self._failure = task.exception()
            self._stop.set()

    # The runners ------------------------------------------------------------------------------

    async def _runner(self) -> None:
        # Looked up once: a cancel order finds the runners busy with its batch by their task.
        runner = asyncio.current_task()
        assert runner is not None
        while True:
            try:
                await self._run_records(runner)
                return
            except Exception as exc:
                # A runner that ended here would leave the worker one short for good.
                log.error("a runner failed between records; it goes on", exc_info=exc)
                WORKER_INTERNAL_ERRORS.inc()
                # A failure that repeats must not spin the event loop.
                await asyncio.sleep(RUNNER_RESTART_DELAY)

    async def _run_records(self, runner: asyncio.Task[Any]) -> None:
        queue = self._queue
        while True:
            try:
                # The queue is rarely empty under load, and this skips a coroutine per record.
                record = queue.get_nowait()
            except asyncio.QueueEmpty:
                record = await queue.get()
            if record is None:
                return
            # Read once, and only here: see shared.wire.message_headers.
            headers = message_headers(record.message)
            try:
                self._backlog.took()
                if self._draining:
                    # A record taken now never starts and is never marked done: the next owner runs it.
                    return
                self._busy += 1
                try:
                    await self._handle(record, headers, runner)
                finally:
                    self._busy -= 1
            except Exception as exc:
                await self._failed(record, headers, exc, None)

    async def _handle(self, record: Record, headers: KafkaHeaders | None, runner: asyncio.Task[Any]) -> None:
        # One coroutine for the whole record, besides the engine's: the steps that need no wait
        # are plain calls, and each coroutine more costs every task its creation and its frames.
        ownership = self._tracker.begin(record.key, record.epoch, record.offset)
        if ownership is not Ownership.OWNED and not await self._wait_for_ownership(record):
            # The partition was revoked while this waited; its next owner runs it.
            return
        try:
            envelope = self._decoder.decode(record.message.value(), headers)
        except InvalidEnvelope as exc:
            await self._replies.dead_letter(record, headers, DeadLetter.invalid(exc))
            self._count(ErrorCode.INVALID_TASK.value)
            return
        batch_id = envelope.batch_id
        try:
            if batch_id in self._cancels:
                result = _error_result(envelope, ErrorCode.CANCELLED)
            else:
                running = self._start_running(batch_id, runner)
                try:
                    result = await self._engine.run(envelope.task, deadline=self._monotonic_deadline(envelope))
                except asyncio.CancelledError:
                    result = await self._cut(record, envelope, runner)
                finally:
                    # Synchronous, so a cancel order only ever finds runners awaiting the engine.
                    running.discard(runner)
                    if not running:
                        del self._running[batch_id]
            later = self._reply(record, envelope, result)
            if later is not None:
                await later
        except Exception as exc:
            await self._failed(record, headers, exc, envelope)

    def _monotonic_deadline(self, envelope: TaskEnvelope) -> float:
        deadline = envelope.deadline
        last, timestamp = self._last_deadline
        if deadline is not last:
            # An aware datetime's timestamp() costs a few microseconds; the tasks decoded from one template share it.
            timestamp = deadline.timestamp()
            self._last_deadline = (deadline, timestamp)
        return time.monotonic() + (timestamp - time.time())

    def _start_running(self, batch_id: str, runner: asyncio.Task[Any]) -> set[asyncio.Task[Any]]:
        """Note that ``runner`` runs a task of ``batch_id``, so a cancel order for it can cut the runner."""
        running = self._running.get(batch_id)
        if running is None:
            running = self._running[batch_id] = set()
        running.add(runner)
        return running

    async def _cut(self, record: Record, envelope: TaskEnvelope, runner: asyncio.Task[Any]) -> TaskResult:
        """The result of a task cut by a cancel order; one cut by the drain is answered, then the runner ends."""
        cut = _error_result(envelope, ErrorCode.CANCELLED)
        if self._draining or envelope.batch_id not in self._cancels:
            # Cut by the drain: the client still gets an outcome, then the runner ends.
            later = self._reply(record, envelope, cut)
            if later is not None:
                await asyncio.shield(later)
            raise asyncio.CancelledError
        # Cut by a cancel order: this runner goes on with the next record.
        runner.uncancel()
        return cut

    async def _failed(
        self, record: Record, headers: KafkaHeaders | None, exc: Exception, envelope: TaskEnvelope | None
    ) -> None:
        """End a record whose handling raised: a dead letter, and an ``internal`` result when the task was read."""
        where = f"{record.key[0]}[{record.key[1]}]@{record.offset}"
        log.error("handling %s failed; it goes to %s", where, DLQ_TOPIC, exc_info=exc)
        WORKER_INTERNAL_ERRORS.inc()
        try:
            await self._replies.dead_letter(record, headers, DeadLetter.internal(exc, envelope))
        except Exception as again:
            log.error("could not dead-letter %s; it stays incomplete and runs again", where, exc_info=again)
            return
        self._count(ErrorCode.INTERNAL.value)

    def _reply(self, record: Record, envelope: TaskEnvelope, result: TaskResult) -> Awaitable[None] | None:
        """Produce ``result``; ``None`` when that is done at once (nearly always), else what to await."""
        if self._replies.produce_result(record, envelope.batch_id, envelope.reply_topic, result):
            self._count(result.outcome)
            return None
        return self._reply_later(record, envelope, result)

    async def _reply_later(self, record: Record, envelope: TaskEnvelope, result: TaskResult) -> None:
        await self._replies.send_result(record, envelope.batch_id, envelope.reply_topic, result)
        self._count(result.outcome)

    def _count(self, outcome: str) -> None:
        self._counts[outcome] = self._counts.get(outcome, 0) + 1
        _completed_counter(outcome).inc()

    # Shutdown ---------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Stop fetching, let tasks in flight finish within the grace period, cut the rest, commit, leave."""
        grace = self.config.worker.grace_period
        log.info("draining: %d tasks in flight, up to %g s to finish", self._busy, grace)
        self._fetcher.stop_fetching()
        self._draining = True
        for _ in self._runners:
            # Wakes every idle runner; a busy one ends after its task.
            self._queue.put_nowait(None)
        _, late = await asyncio.wait(self._runners, timeout=grace)
        for runner in late:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._deliveries.cancel()
        # Serves the last delivery reports too.
        await asyncio.to_thread(self._producer.flush, FLUSH_TIMEOUT)
        await asyncio.to_thread(self._fetcher.close)
        await self._engine.aclose()
        self._health.stop()
        counts = " ".join(f"{outcome}={n}" for outcome, n in sorted(self._counts.items()))
        log.info("worker %s stopped: %s", self.name, counts or "no tasks")


@functools.cache
def _completed_counter(outcome: str) -> Counter:
    # labels() looks the child up under a lock on every call; the outcomes are few.
    return WORKER_TASKS_COMPLETED.labels(outcome)


def _error_result(envelope: TaskEnvelope, code: ErrorCode) -> TaskResult:
    return error_result(envelope.task, code)
