"""Flow control: whether the fetcher takes records this round, holds off, or pauses its partitions.

The fetcher hands records to the event loop; the *backlog* is how many it handed that no runner has
taken yet, and it never passes ``max_backlog``. The fetcher takes records only once at least half
the backlog has room, so it hands them over in a few large batches rather than one by one.

Pausing is the tool for a backlog that stays full, not for one that fills for a moment. A librdkafka
pause throws away the partitions' prefetched messages, and after a resume the first fetch waits for
the broker thread's next wake-up, about a second (measured here; see also confluent-kafka-go#630).
A worker that paused whenever its backlog filled, which happens every few milliseconds when tasks are
fast, managed about a hundred tasks a second. So a backlog short of room first *holds*: the fetcher
takes nothing and waits a moment, its partitions still fetching. Only when that has lasted
``pause_after`` seconds, because the tasks are slow, do the partitions pause; the fetcher goes on
polling, so the consumer stays in its group however long the tasks take (``max.poll.interval.ms``),
and ``pause_after`` stays well below that interval. Paused partitions resume once half the backlog
has room again. When the worker stops fetching (SIGTERM), the partitions pause at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["FlowControl", "Step"]


class Step(enum.Enum):
    """What the fetcher does with the group consumer this round."""

    TAKE = "take"  #: consume up to the room there is
    HOLD = "hold"  #: consume nothing; wait a moment for the event loop to make room
    PAUSE = "pause"  #: pause the partitions, then poll to serve the group; nothing new arrives
    RESUME = "resume"  #: resume the partitions, then consume up to the room there is
    POLL = "poll"  #: the partitions stay paused; poll to serve the group


@dataclass
class FlowControl:
    """Decides each round's ``Step`` from the backlog; used by the fetcher thread only."""

    max_backlog: int
    #: Seconds the backlog may stay short of room before the partitions pause.
    pause_after: float
    #: ``now`` of the first round in a row that found the backlog short of room.
    short_since: float | None = None

    def room(self, backlog: int, *, fetching: bool) -> int:
        """How many more records the event loop may be handed now."""
        return self.max_backlog - backlog if fetching else 0

    def step(self, backlog: int, *, fetching: bool, paused: bool, now: float) -> Step:
        if not fetching:
            return Step.POLL if paused else Step.PAUSE
        if self.room(backlog, fetching=fetching) >= max(1, self.max_backlog // 2):
            self.short_since = None
            return Step.RESUME if paused else Step.TAKE
        if paused:
            return Step.POLL
        if self.short_since is None:
            self.short_since = now
        return Step.PAUSE if now - self.short_since >= self.pause_after else Step.HOLD
