"""Which offset each partition may commit while tasks finish out of order.

Terms, used the same way everywhere in the worker:

* **seen**: an offset the worker consumed. ``highest_seen`` is the largest one of an assignment.
* **incomplete**: seen, and not yet done.
* **done**: the task finished and the broker acknowledged what the worker produced for it (the
  result, or the dead-letter record). Only then may a commit pass it.
* **commit offset**: what Kafka stores, the next offset to read: the lowest incomplete offset, or
  ``highest_seen + 1`` when nothing is incomplete. It is always computed, never stored. An offset
  that was never consumed (a compaction gap, a transaction marker) is never tracked, so it never
  holds a commit back.
* **epoch**: a number each assignment of a partition gets. A record carries the epoch it was
  consumed in; once the partition is revoked, marking it done changes nothing, because the next
  owner will run it again from the last commit.
* **running**: seen, started by a runner (``begin``), and not yet done. A revoked partition's
  running records may finish, and be committed, before it goes (``stop_starting``, ``running``),
  so that its next owner doesn't run them again.
* **ownership**: whether a record may start (``Ownership``). After a *stall*, a gap between two
  beats of the fetcher longer than ``stall_after`` (the process was frozen, or starved), the group
  may have given the worker's partitions to another member without the worker having heard yet.
  Ownership is then *in doubt*: no record starts until a commit proves the worker is still a
  member (``confirm``) or the partitions are revoked, which makes their records stale.

The tracker is shared by the fetcher thread (track, assign, revoke, commit, beat) and the event
loop and delivery callbacks (mark done), so every method that changes or walks it takes one lock.
"""

from __future__ import annotations

import enum
import itertools
import math
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Commit", "OffsetTracker", "Ownership", "PartitionOffsets", "TopicPartitionKey"]

#: A partition, as ``(topic, partition)``.
TopicPartitionKey = tuple[str, int]


class PartitionOffsets:
    """The offsets of one assigned partition."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.highest_seen: int | None = None
        #: The last commit offset handed to Kafka; ``None`` when none was, or when it failed.
        self.commit_sent: int | None = None
        #: Revoked, its running records finishing: none starts any more.
        self.revoking = False
        # Seen offsets in ascending order; done ones are dropped from the front lazily.
        self._seen_order: deque[int] = deque()
        self._incomplete: set[int] = set()
        self._running: set[int] = set()

    def track(self, offset: int) -> bool:
        """Record a consumed ``offset`` as incomplete; ``False`` if it is not above ``highest_seen``."""
        if (self.highest_seen is not None) and offset <= self.highest_seen:
            return False
        self.highest_seen = offset
        self._seen_order.append(offset)
        self._incomplete.add(offset)
        return True

    def track_run(self, offsets: list[int]) -> None:
        """``track`` each of ``offsets``, one partition's run of a consumed batch: at once when they ascend."""
        highest = self.highest_seen
        # As librdkafka hands them over. The checks and the bulk adds run in C, not a Python step per offset.
        if ((highest is None) or offsets[0] > highest) and all(map(operator.lt, offsets, offsets[1:])):
            self.highest_seen = offsets[-1]
            self._seen_order.extend(offsets)
            self._incomplete.update(offsets)
            return
        for offset in offsets:
            self.track(offset)

    def mark_done(self, offset: int) -> bool:
        """Record ``offset`` as done; ``False`` if it was not incomplete."""
        if offset not in self._incomplete:
            return False
        self._incomplete.remove(offset)
        self._running.discard(offset)
        return True

    def begin(self, offset: int) -> None:
        """A runner starts ``offset``'s task."""
        if offset in self._incomplete:
            self._running.add(offset)

    @property
    def incomplete_count(self) -> int:
        return len(self._incomplete)

    @property
    def running_count(self) -> int:
        return len(self._running)

    def lowest_incomplete(self) -> int | None:
        order = self._seen_order
        while order and order[0] not in self._incomplete:
            order.popleft()
        return order[0] if order else None

    def next_commit_offset(self) -> int | None:
        """The offset Kafka may store for this partition, or ``None`` before anything was seen."""
        lowest = self.lowest_incomplete()
        if lowest is not None:
            return lowest
        return None if self.highest_seen is None else self.highest_seen + 1

    def commit_due(self) -> int | None:
        """The commit offset if it differs from the last one sent, else ``None``."""
        offset = self.next_commit_offset()
        return None if (offset is None) or offset == self.commit_sent else offset


@dataclass(frozen=True, slots=True)
class Commit:
    """One partition's offset to commit, with the epoch it was computed in."""

    topic: str
    partition: int
    offset: int
    epoch: int


class Ownership(enum.Enum):
    """Whether a record may start, asked by the runner that took it."""

    OWNED = "owned"  #: its partition is still assigned in its epoch, and no stall left that in doubt
    IN_DOUBT = "in doubt"  #: still assigned, but since a stall not known to be owned: hold it
    STALE = "stale"  #: its partition was revoked since it was consumed: its next owner runs it


class OffsetTracker:
    """The ``PartitionOffsets`` of every assigned partition, behind one lock.

    ``stall_after`` is the gap between the fetcher's beats, in seconds, after which ownership is in
    doubt; none by default. ``clock`` is monotonic.
    """

    def __init__(self, *, stall_after: float = math.inf, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}
        self._epochs = itertools.count(1)
        self._stall_after = stall_after
        self._clock = clock
        self._last_beat: float | None = None
        #: How many stalls put ownership in doubt so far; a proof counts only for the latest.
        self._stalls = 0
        self._in_doubt = False

    def assign(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """Start tracking ``partitions`` afresh, each under a new epoch."""
        with self._lock:
            for key in partitions:
                self._partitions[key] = PartitionOffsets(next(self._epochs))

    def revoke(self, partitions: Iterable[TopicPartitionKey]) -> list[Commit]:
        """Stop tracking ``partitions``; returns what may still be committed for them."""
        commits = []
        with self._lock:
            for key in partitions:
                state = self._partitions.pop(key, None)
                offset = None if state is None else state.commit_due()
                if (state is not None) and (offset is not None):
                    commits.append(Commit(key[0], key[1], offset, state.epoch))
        return commits

    def track(self, key: TopicPartitionKey, offset: int) -> int | None:
        """Record a consumed offset; returns its epoch, or ``None`` if the partition isn't assigned."""
        with self._lock:
            state = self._partitions.get(key)
            if state is None:
                return None
            state.track(offset)
            return state.epoch

    def track_runs(self, runs: Iterable[tuple[TopicPartitionKey, list[int]]]) -> list[int | None]:
        """``track`` a consumed batch, as runs of offsets of one partition each, under one lock; returns each
        run's epoch, in order (``None``: its partition isn't assigned)."""
        epochs: list[int | None] = []
        with self._lock:
            partitions = self._partitions
            for key, offsets in runs:
                state = partitions.get(key)
                if state is None:
                    epochs.append(None)
                else:
                    state.track_run(offsets)
                    epochs.append(state.epoch)
        return epochs

    def mark_done(self, key: TopicPartitionKey, offset: int, epoch: int) -> bool:
        """Record ``offset`` as done; ``False`` if it is stale (another epoch) or unknown."""
        with self._lock:
            state = self._partitions.get(key)
            if (state is None) or state.epoch != epoch:
                return False
            return state.mark_done(offset)

    def begin(self, key: TopicPartitionKey, epoch: int, offset: int) -> Ownership:
        """Whether the record at ``offset``, consumed in ``epoch``, may start now; if so it is running.

        A runner that asks after a stall, before the fetcher's first beat since, sees the stall in
        the age of the last beat.
        """
        now = self._clock()
        with self._lock:
            state = self._partitions.get(key)
            if (state is None) or state.epoch != epoch or state.revoking:
                return Ownership.STALE
            last = self._last_beat
            if self._in_doubt or ((last is not None) and now - last > self._stall_after):
                return Ownership.IN_DOUBT
            state.begin(offset)
            return Ownership.OWNED

    def stop_starting(self, partitions: Iterable[TopicPartitionKey]) -> None:
        """No record of ``partitions`` starts any more; those running may finish."""
        with self._lock:
            for key in partitions:
                state = self._partitions.get(key)
                if state is not None:
                    state.revoking = True

    def running(self, partitions: Iterable[TopicPartitionKey]) -> int:
        """How many records of ``partitions`` are running."""
        with self._lock:
            return sum(state.running_count for key in partitions if (state := self._partitions.get(key)) is not None)

    def beat(self) -> float | None:
        """The fetcher is alive; returns the stall's length if the gap since its last beat was one,
        which puts ownership in doubt."""
        now = self._clock()
        with self._lock:
            last = self._last_beat
            gap = None if last is None else now - last
            stalled = (gap is not None) and gap > self._stall_after
            if stalled:
                self._stalls += 1
                self._in_doubt = True
            self._last_beat = now
        return gap if stalled else None

    @property
    def in_doubt(self) -> bool:
        return self._in_doubt

    def doubt(self) -> tuple[int, list[Commit]]:
        """The stall a proof would answer, and the commit offset of every partition that has one.

        Committing these changes nothing Kafka doesn't know already, or what is due anyway; a
        commit that succeeds proves the group still counts this member in its generation.
        """
        with self._lock:
            commits = []
            for (topic, partition), state in self._partitions.items():
                offset = state.next_commit_offset()
                if offset is not None:
                    commits.append(Commit(topic, partition, offset, state.epoch))
            return self._stalls, commits

    def confirm(self, stall: int) -> bool:
        """A commit made for ``stall`` succeeded: ownership is no longer in doubt, unless another
        stall came since. Returns whether the doubt ended."""
        with self._lock:
            if self._in_doubt and stall == self._stalls:
                self._in_doubt = False
                return True
            return False

    def commits_due(self) -> list[Commit]:
        """The partitions whose commit offset moved since it was last sent, and that offset."""
        with self._lock:
            commits = []
            for (topic, partition), state in self._partitions.items():
                offset = state.commit_due()
                if offset is not None:
                    commits.append(Commit(topic, partition, offset, state.epoch))
            return commits

    def commit_sent(self, commits: Iterable[Commit]) -> None:
        """Remember ``commits`` as sent, so they aren't sent again."""
        with self._lock:
            for commit in commits:
                state = self._partitions.get((commit.topic, commit.partition))
                if (state is not None) and state.epoch == commit.epoch:
                    state.commit_sent = commit.offset

    def commit_failed(self, failed: Iterable[tuple[TopicPartitionKey, int]]) -> None:
        """Forget the commits of these ``(partition, offset)`` pairs, so the next round sends them again."""
        with self._lock:
            for key, offset in failed:
                state = self._partitions.get(key)
                if (state is not None) and state.commit_sent == offset:
                    state.commit_sent = None

    def assigned(self) -> list[TopicPartitionKey]:
        with self._lock:
            return list(self._partitions)
