"""The fetcher: the one thread that talks to the group consumer and the control consumer.

librdkafka's consumer calls block, and its rebalance callbacks run on whichever thread polls. So
one thread owns the group consumer, the control consumer and every commit; none of those calls
runs on the event loop, and no two of them run at once. Each round, in order:

* flow control (see ``consumer.flow``): take records once half the worker's backlog has room, hold
  off until runners make that room, and pause every partition only when the holding lasts, polling
  on, so ``max.poll.interval.ms`` is never hit;
* commit the offsets that moved (see ``consumer.offsets``), at most every ``commit_interval``;
* consume a batch, unless holding: block for the first message only, then take what is already
  fetched, because ``consume(n, timeout)`` would otherwise wait out the whole timeout for a partial batch;
* beat (see below), track each record's offset, then hand the batch to the event loop;
* after a stall, send the commit that proves the worker still owns its partitions;
* read cancel orders from ``trs-control`` (assigned once the topic exists: it is waited for,
  never a reason to stop), refresh lag.

**Stalls.** A process frozen (SIGSTOP, a VM paused) or starved for longer than its session
timeout is out of its group when it wakes, but it hears so only when its consumer next serves
the group's callbacks, while its runners may already be starting the records it holds. So each
round beats the offset tracker, which notices a gap (``stall_after``, half the session timeout:
the broker counts the timeout from the last heartbeat, which may be older than the stall) and
puts ownership in doubt; runners hold their records (see ``consumer.offsets``). The fetcher then
commits every partition's commit offset again, asynchronously and marked ``PROOF``: the broker
accepts a commit only from a member of its current generation, so success ends the doubt, and
ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID come with the rebalance callbacks that revoke the
partitions, whose held records are then left to the next owner. A synchronous commit would do
too, but librdkafka's waits for the coordinator without a timeout (measured: still blocked after
three minutes with the broker down), and this thread must never block like that.

The producer's delivery reports are served on the event loop (``consumer.worker``), not here: each
report calls back into Python, and from this thread every callback had to take the GIL from the
event loop and give it back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.flow import Backlog, FlowControl, Step
from consumer.metrics import WORKER_PARTITION_LAG
from consumer.offsets import Commit, OffsetTracker, TopicPartitionKey
from consumer.reminders import Reminder
from shared.errors import InvalidEnvelope
from shared.models import CancelEnvelope
from shared.wire import CONTROL_KIND_CANCEL, CONTROL_TOPIC, control_kind, decode_cancel, message_headers

__all__ = ["Fetcher", "FetcherConfig", "Record"]

log = logging.getLogger(__name__)

#: Seconds between refreshes of the per-partition lag gauges.
LAG_INTERVAL = 2.0
#: Most cancel orders read in one round.
CONTROL_BATCH = 500
#: Seconds between looks for ``trs-control`` while it is missing, and the most one look may take.
CONTROL_RETRY = 2.0
CONTROL_LOOKUP_TIMEOUT = 1.0
#: Seconds between log lines about a condition that lasts.
REMIND_EVERY = 30.0
#: Seconds between commits sent to prove ownership while it is in doubt.
PROOF_INTERVAL = 0.5
#: The commit metadata of those commits, followed by the stall they answer.
PROOF = "trs-ownership-proof-"
#: Seconds between looks at a revoke's running tasks.
REVOKE_POLL = 0.01


_new_tuple = tuple.__new__


class Record(NamedTuple):
    """A consumed task message, where it came from, and the assignment epoch it was consumed in.

    A named tuple: one is made per message, and a frozen dataclass costs several times as much.
    """

    message: Message
    key: TopicPartitionKey
    offset: int
    epoch: int


@dataclass(frozen=True, kw_only=True)
class FetcherConfig:
    """What the fetcher needs besides its clients."""

    topics: Sequence[str]
    consume_batch: int
    commit_interval: float
    #: Seconds the backlog may stay short of room before the partitions pause; see ``consumer.flow``.
    pause_after: float
    #: Most seconds a revoke waits for the partitions' running tasks to be done.
    revoke_wait: float
    poll_timeout: float = 0.1


class Fetcher:
    """Runs the consume loop on its own thread; see the module docstring for one round."""

    def __init__(
        self,
        *,
        consumer_config: dict[str, Any],
        control_config: dict[str, Any],
        tracker: OffsetTracker,
        config: FetcherConfig,
        backlog: Backlog,
        on_records: Callable[[list[Record]], object],
        on_cancel: Callable[[CancelEnvelope], object],
        on_failure: Callable[[BaseException], object],
        on_ownership: Callable[[], object],
    ) -> None:
        self._consumer = Consumer({**consumer_config, "on_commit": self._on_commit})
        self._control = Consumer(control_config)
        self._tracker = tracker
        self._config = config
        self._backlog = backlog
        self._on_records = on_records
        self._on_cancel = on_cancel
        self._on_failure = on_failure
        self._on_ownership = on_ownership
        self._thread = threading.Thread(target=self._main, name="trs-fetcher", daemon=True)
        self._fetching = threading.Event()
        self._closing = threading.Event()
        self._joined = threading.Event()
        self._flow = FlowControl(backlog.max_backlog, config.pause_after)
        self._paused = False
        #: Partitions assigned since the last round; see ``_flow_control``.
        self._fresh: list[TopicPartition] = []
        self._last_commit = 0.0
        self._last_proof = 0.0
        self._proof_failed = Reminder(REMIND_EVERY)
        self._control_assigned = False
        self._last_control_lookup = -CONTROL_RETRY
        self._control_missing = Reminder(REMIND_EVERY)
        #: Why the control topic isn't read yet, for ``/readyz``; ``None`` once it is.
        self.control_problem: str | None = None
        self._last_lag = 0.0
        self._lag_labels: set[TopicPartitionKey] = set()
        #: ``time.monotonic()`` at the end of the last round; the health check reads it.
        self.last_beat = time.monotonic()

    # The event loop's side ----------------------------------------------------------------

    def start(self) -> None:
        self._consumer.subscribe(
            list(self._config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._fetching.set()
        self._thread.start()

    @property
    def joined(self) -> bool:
        """Whether the consumer is a member of its group with an assignment (possibly empty)."""
        return self._joined.is_set()

    @property
    def paused(self) -> bool:
        return self._paused

    def stop_fetching(self) -> None:
        """Take no more records; partitions are paused on the next round and polling goes on."""
        self._fetching.clear()

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is done, leave the group and end the thread. Blocks; call it off the loop."""
        self._closing.set()
        self._thread.join(timeout)

    # The fetcher thread ---------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while not self._closing.is_set():
                self._round()
            self._shut_down()
        except BaseException as exc:
            log.exception("the fetcher thread failed")
            self._on_failure(exc)

    def _round(self) -> None:
        step, room = self._flow_control()
        self._commit_if_due()
        if step is Step.HOLD:
            self._backlog.wait_for_room(self._config.poll_timeout)
            self._beat()
        else:
            records = self._consume(room)
            if records:
                self._backlog.handed(len(records))
                self._on_records(records)
        if self._tracker.in_doubt:
            self._prove_ownership()
        self._watch_control()
        self._read_control()
        self._refresh_lag()

    def _beat(self) -> None:
        stalled = self._tracker.beat()
        self.last_beat = time.monotonic()
        if stalled is not None:
            log.warning(
                "the worker stalled for %.1f s; its records wait until a commit proves it still owns %s",
                stalled,
                _describe(self._tracker.assigned()) or "its partitions",
            )

    def _flow_control(self) -> tuple[Step, int]:
        """Pause or resume as the backlog demands; returns the round's step and the room for records."""
        backlog = len(self._backlog)
        fetching = self._fetching.is_set()
        step = self._flow.step(backlog, fetching=fetching, paused=self._paused, now=time.monotonic())
        if step is Step.RESUME:
            self._set_paused(False)
        elif step is Step.PAUSE:
            self._set_paused(True)
        elif self._fresh:
            # librdkafka keeps a partition's pause across revoke and assign: one paused, revoked
            # while the others resumed, and assigned again would stay paused for good. So new
            # partitions are set to the others' state.
            (self._consumer.pause if self._paused else self._consumer.resume)(self._fresh)
        self._fresh = []
        return step, self._flow.room(backlog, fetching=fetching)

    def _set_paused(self, paused: bool) -> None:
        partitions = self._consumer.assignment()
        if paused:
            self._consumer.pause(partitions)
        else:
            self._consumer.resume(partitions)
        self._paused = paused

    def _consume(self, room: int) -> list[Record]:
        # Even with no room the consumer is polled, to serve rebalances and stay in the group.
        # Whatever it returns is tracked and handed on: its position has moved past it, so a
        # record dropped here would never be read again. The worker decides whether it runs.
        limit = max(1, min(room, self._config.consume_batch))
        messages = self._consumer.consume(1, self._config.poll_timeout)
        if messages and limit > 1:
            messages += self._consumer.consume(limit - 1, 0)
        # Before the records are tracked: a stall inside consume is noticed before any is handed on.
        self._beat()
        # Runs of one partition each: librdkafka hands over a partition's messages together, so the
        # tracker's lock, its lookup and the epoch come once per run rather than once per record.
        runs: list[tuple[TopicPartitionKey, list[Message], list[int]]] = []
        key: TopicPartitionKey | None = None
        run: list[Message] = []
        offsets: list[int] = []
        for message in messages:
            error = message.error()
            offset = message.offset()
            if error is not None or offset is None:
                self._log_consume_error(error)
                continue
            topic, partition = message.topic() or "", message.partition() or 0
            if (key is None) or partition != key[1] or topic != key[0]:
                key, run, offsets = (topic, partition), [], []
                runs.append((key, run, offsets))
            run.append(message)
            offsets.append(offset)
        # One lock for the batch: the event loop takes the same lock for every record it starts and ends.
        epochs = self._tracker.track_runs([(key, offsets) for key, _, offsets in runs])
        records: list[Record] = []
        for (key, run, offsets), epoch in zip(runs, epochs, strict=True):
            if epoch is not None:
                # tuple.__new__ straight away: a named tuple's own __new__ is a Python function, a frame per record.
                records += [_new_tuple(Record, (m, key, o, epoch)) for m, o in zip(run, offsets, strict=True)]
        return records

    @staticmethod
    def _log_consume_error(error: KafkaError | None) -> None:
        if (error is None) or error.code() == KafkaError._PARTITION_EOF:
            return
        log.warning("consume error: %s", error.str())

    def _commit_if_due(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self._config.commit_interval:
            return
        self._last_commit = now
        commits = self._tracker.commits_due()
        if commits:
            self._commit(commits, asynchronous=not force)

    def _commit(self, commits: list[Commit], *, asynchronous: bool) -> None:
        offsets = [TopicPartition(c.topic, c.partition, c.offset) for c in commits]
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed, will retry: %s", exc)
            self._tracker.commit_failed(((c.topic, c.partition), c.offset) for c in commits)
            return
        self._tracker.commit_sent(commits)

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's ``on_commit`` callback: a failed commit is sent again next round."""
        failed = [p for p in partitions if (error is not None) or (p.error is not None)]
        proof = next((p.metadata for p in partitions if (p.metadata or "").startswith(PROOF)), None)
        if failed:
            log.warning("commit of %d partitions failed, will retry: %s", len(failed), error or failed[0].error)
            self._tracker.commit_failed(((p.topic, p.partition), p.offset) for p in failed)
        if proof is not None:
            self._proof_answered(int(proof.removeprefix(PROOF)), failed=bool(failed))

    def _prove_ownership(self) -> None:
        """Commit every partition's commit offset, marked as the proof for the latest stall."""
        now = time.monotonic()
        if now - self._last_proof < PROOF_INTERVAL:
            return
        stall, commits = self._tracker.doubt()
        if not commits:
            # Nothing is held: what is consumed next gives a partition an offset to prove with.
            return
        self._last_proof = now
        offsets = [TopicPartition(c.topic, c.partition, c.offset, metadata=f"{PROOF}{stall}") for c in commits]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.warning("the commit that would prove ownership was refused: %s", exc)
            return
        self._tracker.commit_sent(commits)

    def _proof_answered(self, stall: int, *, failed: bool) -> None:
        if failed:
            # The rebalance callbacks that follow revoke the partitions, or a later proof succeeds.
            if self._proof_failed.due():
                log.info("ownership is still in doubt after the stall; its partitions' records wait")
            return
        if self._tracker.confirm(stall):
            self._proof_failed.reset()
            log.info(
                "a commit proved the worker still owns %s; its records start again", _describe(self._tracker.assigned())
            )
            self._on_ownership()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._tracker.assign(keys)
        self._joined.set()
        self._fresh += [TopicPartition(p.topic, p.partition) for p in partitions]
        if keys:
            log.info("assigned %s", _describe(keys))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._tracker.stop_starting(keys)
        # Runners holding records of these partitions let them go.
        self._on_ownership()
        self._let_running_finish(keys)
        commits = self._tracker.revoke(keys)
        if commits:
            # Commit what is safe now; whatever is still running is left to the next owner.
            self._commit(commits, asynchronous=False)
        self._forget_lag(keys)
        if keys:
            log.info("revoked %s", _describe(keys))

    def _let_running_finish(self, keys: list[TopicPartitionKey]) -> None:
        """Wait up to ``revoke_wait`` for the running tasks of ``keys`` to be done, so the commit passes them.

        A task still running when a partition goes runs again at its next owner. The group waits
        for this member meanwhile, which librdkafka keeps in it with heartbeats from its own thread.
        """
        running = self._tracker.running(keys)
        if running == 0:
            return
        deadline = time.monotonic() + self._config.revoke_wait
        log.info("revoking %s: waiting for %d running tasks", _describe(keys), running)
        while running and time.monotonic() < deadline:
            time.sleep(REVOKE_POLL)
            self._beat()
            running = self._tracker.running(keys)
        if running:
            log.info(
                "%d tasks still ran after %g s; their partitions' next owners run them again",
                running,
                self._config.revoke_wait,
            )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(p.topic, p.partition) for p in partitions]
        self._tracker.revoke(keys)
        self._forget_lag(keys)
        self._joined.clear()
        self._on_ownership()
        log.warning("lost %s; it may be reassigned", _describe(keys))

    def _watch_control(self) -> None:
        """Assign ``trs-control`` once it exists, looking every ``CONTROL_RETRY`` seconds until then."""
        now = time.monotonic()
        if self._control_assigned or now - self._last_control_lookup < CONTROL_RETRY:
            return
        self._last_control_lookup = now
        try:
            metadata = self._control.list_topics(CONTROL_TOPIC, timeout=CONTROL_LOOKUP_TIMEOUT)
        except KafkaException:
            # The broker is away; the group consumer's callbacks say so too. Look again.
            return
        topic = metadata.topics.get(CONTROL_TOPIC)
        if topic is None or topic.error is not None or not topic.partitions:
            self.control_problem = f"topic {CONTROL_TOPIC} missing: create it with 'trs topics init'"
            if self._control_missing.due():
                log.warning("waiting for %s; cancel orders are read once it exists", self.control_problem)
            return
        # Every worker reads every cancel order, so the control topic is assigned, not subscribed.
        self._control.assign([TopicPartition(CONTROL_TOPIC, p, OFFSET_BEGINNING) for p in topic.partitions])
        self._control_assigned = True
        if self.control_problem is not None:
            log.info("%s exists now; reading cancel orders", CONTROL_TOPIC)
        self.control_problem = None

    def _read_control(self) -> None:
        for message in self._control.consume(CONTROL_BATCH, 0):
            if message.error() is not None:
                self._log_consume_error(message.error())
                continue
            headers = message_headers(message)
            if headers is None:
                log.warning("ignored a record on %s at offset %s: unreadable headers", CONTROL_TOPIC, message.offset())
                continue
            if control_kind(headers) != CONTROL_KIND_CANCEL:
                # Release notices and any later kind are for clients; a worker acts on cancel orders only.
                continue
            try:
                order = decode_cancel(message.value(), headers)
            except InvalidEnvelope as exc:
                log.warning("ignored a bad record on %s at offset %s: %s", CONTROL_TOPIC, message.offset(), exc)
                continue
            self._on_cancel(order)

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < LAG_INTERVAL:
            return
        self._last_lag = now
        assignment = self._consumer.assignment()
        if not assignment:
            return
        for position in self._consumer.position(assignment):
            try:
                _, high = self._consumer.get_watermark_offsets(position, cached=True)
            except KafkaException:
                continue
            if high < 0 or position.offset < 0:
                continue
            key = (position.topic, position.partition)
            WORKER_PARTITION_LAG.labels(position.topic, str(position.partition)).set(max(0, high - position.offset))
            self._lag_labels.add(key)

    def _forget_lag(self, keys: list[TopicPartitionKey]) -> None:
        for key in keys:
            if key in self._lag_labels:
                self._lag_labels.discard(key)
                WORKER_PARTITION_LAG.remove(key[0], str(key[1]))

    def _shut_down(self) -> None:
        self._commit_if_due(force=True)
        self._control.close()
        # Leaves the group; the revoke callback commits anything that finished meanwhile.
        self._consumer.close()
        self._joined.clear()
        log.info("left the consumer group")


def _describe(keys: list[TopicPartitionKey]) -> str:
    return ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(keys))
