"""Batches cancelled on the control topic, remembered until their deadline has passed.

The fetcher thread adds orders and the event loop asks about batches; a dict read and write are
each atomic, so no lock is needed. Once a batch's deadline has passed its tasks end ``expired``
anyway, so the order can be forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.models import CancelEnvelope

__all__ = ["CancelRegistry"]


class CancelRegistry:
    """The set of cancelled batch ids."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def add(self, order: CancelEnvelope) -> None:
        self._until[order.batch_id] = order.deadline.timestamp()

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._until

    def __len__(self) -> int:
        return len(self._until)

    def prune(self) -> int:
        """Forget orders whose batch deadline has passed; returns how many."""
        now = self._clock()
        expired = [batch for batch, until in list(self._until.items()) if until < now]
        for batch in expired:
            self._until.pop(batch, None)
        return len(expired)
