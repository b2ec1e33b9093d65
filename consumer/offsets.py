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

The tracker is shared by the fetcher thread (track, assign, revoke, commit) and the event loop and
delivery callbacks (mark done), so every method that changes or walks it takes one lock.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Commit", "OffsetTracker", "PartitionOffsets", "TopicPartitionKey"]

#: A partition, as ``(topic, partition)``.
TopicPartitionKey = tuple[str, int]


class PartitionOffsets:
    """The offsets of one assigned partition."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.highest_seen: int | None = None
        #: The last commit offset handed to Kafka; ``None`` when none was, or when it failed.
        self.commit_sent: int | None = None
        # Seen offsets in ascending order; done ones are dropped from the front lazily.
        self._seen_order: deque[int] = deque()
        self._incomplete: set[int] = set()

    def track(self, offset: int) -> bool:
        """Record a consumed ``offset`` as incomplete; ``False`` if it is not above ``highest_seen``."""
        if (self.highest_seen is not None) and offset <= self.highest_seen:
            return False
        self.highest_seen = offset
        self._seen_order.append(offset)
        self._incomplete.add(offset)
        return True

    def mark_done(self, offset: int) -> bool:
        """Record ``offset`` as done; ``False`` if it was not incomplete."""
        if offset not in self._incomplete:
            return False
        self._incomplete.remove(offset)
        return True

    @property
    def incomplete_count(self) -> int:
        return len(self._incomplete)

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


class OffsetTracker:
    """The ``PartitionOffsets`` of every assigned partition, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[TopicPartitionKey, PartitionOffsets] = {}
        self._epochs = itertools.count(1)

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

    def mark_done(self, key: TopicPartitionKey, offset: int, epoch: int) -> bool:
        """Record ``offset`` as done; ``False`` if it is stale (another epoch) or unknown."""
        with self._lock:
            state = self._partitions.get(key)
            if (state is None) or state.epoch != epoch:
                return False
            return state.mark_done(offset)

    def is_current(self, key: TopicPartitionKey, epoch: int) -> bool:
        """Whether ``epoch`` is still the partition's assignment (so its work still counts).

        Asked once per task, so without the lock: one dict read is atomic, and an answer that a
        revoke makes stale a moment later costs only a run the next owner repeats anyway.
        """
        state = self._partitions.get(key)
        return (state is not None) and state.epoch == epoch

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

    def incomplete(self) -> int:
        """How many tracked offsets are not done, across partitions."""
        with self._lock:
            return sum(state.incomplete_count for state in self._partitions.values())
