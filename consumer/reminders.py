"""Log lines for a condition that lasts, such as waiting for a broker: one at once, then one now and then."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Reminder"]


class Reminder:
    """Says when a lasting condition is worth another log line: at once, then every ``interval`` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """Whether to log now; if so, the next line is due ``interval`` seconds from now."""
        now = self._clock()
        if (self._last is not None) and now - self._last < self._interval:
            return False
        self._last = now
        return True

    def reset(self) -> None:
        """The condition ended: if it comes back, say so at once."""
        self._last = None
