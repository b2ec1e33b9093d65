"""Flow control between the fetcher thread and the event loop.

The fetcher hands records to the event loop; the *backlog* (``Backlog``) is how many it handed that
no runner has taken yet, and it never passes ``max_backlog``. The fetcher takes records only once at
least half the backlog has room (the *low-water mark*), so it hands them over in a few large batches
rather than one by one. ``FlowControl`` decides each round whether it takes records, holds off, or
pauses its partitions.

Pausing is the tool for a backlog that stays full, not for one that fills for a moment. A librdkafka
pause throws away the partitions' prefetched messages, and after a resume the first fetch waits for
the broker thread's next wake-up, about a second (measured here; see also confluent-kafka-go#630).
A worker that paused whenever its backlog filled, which happens every few milliseconds when tasks are
fast, managed about a hundred tasks a second. So a backlog short of room first *holds*: the fetcher
takes nothing, its partitions still fetching, and sleeps until a runner's take brings the backlog
down to the low-water mark, or at most a poll interval. Only when that has lasted
``pause_after`` seconds, because the tasks are slow, do the partitions pause; the fetcher goes on
polling, so the consumer stays in its group however long the tasks take (``max.poll.interval.ms``),
and ``pause_after`` stays well below that interval. Paused partitions resume once half the backlog
has room again. When the worker stops fetching (SIGTERM), the partitions pause at once.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

__all__ = ["Backlog", "FlowControl", "Step", "low_water"]


def low_water(max_backlog: int) -> int:
    """The backlog at or below which the fetcher takes records again: at least half of it has room."""
    return max_backlog - max(1, max_backlog // 2)


class Backlog:
    """Records handed to the event loop that no runner has taken yet.

    The fetcher thread counts what it hands over and the event loop what runners take; each side
    writes only its own counter, so no lock is needed. A take that brings the backlog down to the
    low-water mark wakes the fetcher if it is holding, so it neither polls for room nor sleeps past it.
    """

    def __init__(self, max_backlog: int) -> None:
        self.max_backlog = max_backlog
        self._low_water = low_water(max_backlog)
        self._handed = 0
        self._taken = 0
        self._room = threading.Event()

    def __len__(self) -> int:
        return self._handed - self._taken

    def handed(self, count: int) -> None:
        """The fetcher handed ``count`` records over. Fetcher thread only."""
        self._handed += count

    def took(self) -> None:
        """A runner took one record. Event loop only."""
        self._taken += 1
        # A take lowers the backlog by one, so this sees every crossing of the mark.
        if self._handed - self._taken == self._low_water:
            self._room.set()

    def wait_for_room(self, timeout: float) -> bool:
        """Sleep until the backlog is down to the low-water mark; ``False`` if ``timeout`` passed first.

        Fetcher thread only.
        """
        # Cleared before the check, so a take between the two still wakes the wait.
        self._room.clear()
        return len(self) <= self._low_water or self._room.wait(timeout)


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
        if backlog <= low_water(self.max_backlog):
            self.short_since = None
            return Step.RESUME if paused else Step.TAKE
        if paused:
            return Step.POLL
        if self.short_since is None:
            self.short_since = now
        return Step.PAUSE if now - self.short_since >= self.pause_after else Step.HOLD
