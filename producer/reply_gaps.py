"""Offsets the reply reader was shown past before their records existed, and when to read them again.

The embedded broker (Tansu, in memory) raises a partition's high watermark when it takes an offset
for a produce, and stores that produce's batch a moment later. A fetch that lands in between, after
a later produce from another connection is already stored, returns the later batch, and the
reader's position moves past a record that appears just after. Several workers produce to one
reply topic, so a result can be skipped this way; its task would end ``no_result`` with its result
sitting in the topic. Kafka itself never shows such a gap in a topic written without transactions
or compaction, which is how reply topics (and ``trs-control``) are written.

So the reader tells this tracker every offset it reads. A jump past the next expected offset is a
gap; ``REREAD_DELAY`` seconds later the reader seeks back to the gap's first offset and reads on
from there (the batch drops the copies of results it already has). A gap still there after
``MAX_REREADS`` reads is a hole the broker left for good (a produce it dropped after taking its
offset) and is let be, with a warning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_REREADS", "REREAD_DELAY", "OffsetGaps"]

log = logging.getLogger(__name__)

#: Seconds from seeing a gap to reading it again; doubled at each further read of the same gap.
#: The broker fills it within microseconds, or milliseconds on a loaded machine.
REREAD_DELAY = 0.2
#: Reads again of one gap before it counts as a hole.
MAX_REREADS = 3


@dataclass
class _Partition:
    """What the reader has read of one partition."""

    #: The offset the next record should have.
    expected: int
    #: The gap being read again, and how many times it has been.
    rereading: int | None = None
    rereads: int = 0


class OffsetGaps:
    """Per assigned partition, the next offset due and the gap to read again, if any."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._partitions: dict[tuple[str, int], _Partition] = {}
        #: The partitions with a gap waiting to be read again (usually none): when, and from where.
        self._waiting: dict[tuple[str, int], tuple[float, int]] = {}

    def start(self, topic: str, partition: int, offset: int) -> None:
        """``partition`` of ``topic`` is read from ``offset`` on."""
        self._partitions[(topic, partition)] = _Partition(offset)
        self._waiting.pop((topic, partition), None)

    def forget(self, topic: str) -> None:
        """``topic`` is no longer read."""
        for key in [key for key in self._partitions if key[0] == topic]:
            del self._partitions[key]
            self._waiting.pop(key, None)

    def seen(self, topic: str | None, partition: int | None, offset: int | None) -> None:
        """The reader read the record at ``offset`` (librdkafka's types: a record always has all three)."""
        if topic is None or partition is None or offset is None:
            return
        state = self._partitions.get((topic, partition))
        if state is None:
            return
        if offset == state.rereading:
            state.rereading, state.rereads = None, 0
        if offset > state.expected and (topic, partition) not in self._waiting:
            self._gap(topic, partition, state)
        state.expected = max(state.expected, offset + 1)

    def _gap(self, topic: str, partition: int, state: _Partition) -> None:
        first = state.expected
        if first != state.rereading:
            state.rereading, state.rereads = None, 0
        elif state.rereads >= MAX_REREADS:
            log.warning(
                "offset %d of %s[%d] never came after %d reads: the broker left a hole there; reading on",
                first,
                topic,
                partition,
                state.rereads,
            )
            state.rereading, state.rereads = None, 0
            return
        self._waiting[(topic, partition)] = (self._clock() + REREAD_DELAY * 2**state.rereads, first)

    def due(self) -> list[tuple[str, int, int]]:
        """``(topic, partition, offset)`` for each gap to read again now: the reader seeks there."""
        if not self._waiting:
            return []
        now = self._clock()
        seeks = []
        for key, (when, first) in list(self._waiting.items()):
            if when > now:
                continue
            del self._waiting[key]
            state = self._partitions[key]
            state.rereading, state.expected = first, first
            state.rereads += 1
            seeks.append((key[0], key[1], first))
        return seeks
