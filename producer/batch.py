"""A launched batch: the tasks it runs and the results that have come back.

Results arrive in completion order. ``deliver`` keeps the first result per task id and drops
the rest, since remote delivery is at least once. Iterating with ``async for`` yields each
result once it is in; several iterators may run, each from the start.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from shared.errors import ErrorCode, UsageError
from shared.models import Task, TaskResult, error_result

__all__ = ["Batch", "BatchState"]


class BatchState(enum.Enum):
    RUNNING = "running"  #: some tasks have no result yet
    DONE = "done"  #: every task has its result
    CLOSED = "closed"  #: closed by the caller; its resources are freed


class Batch:
    """The tasks of one ``launch`` and their results."""

    def __init__(self, tasks: Sequence[Task], *, batch_id: str | None = None) -> None:
        self.id = batch_id or uuid.uuid4().hex
        self.tasks: list[Task] = [t for t in tasks if not t.ignore]
        self.launched_at = time.monotonic()
        # Keyed by the id's int: hashing a UUID calls UUID.__hash__, a Python function, each time.
        self._pending: dict[int, Task] = {t.id.int: t for t in self.tasks}
        self._completed: list[TaskResult] = []
        #: The iterators waiting for the next result, each woken once: cheaper per result than an Event.
        self._waiters: list[asyncio.Future[None]] = []
        #: Set once the last result is in or the batch is closed: all ``wait`` waits for.
        self._settled = asyncio.Event()
        self._closed = False
        self.duplicates = 0

    @property
    def state(self) -> BatchState:
        if self._closed:
            return BatchState.CLOSED
        return BatchState.RUNNING if self._pending else BatchState.DONE

    @property
    def running(self) -> bool:
        """True while some task has no result yet."""
        return bool(self._pending) and not self._closed

    @property
    def pending(self) -> frozenset[uuid.UUID]:
        """Ids of the tasks still waiting for a result."""
        return frozenset(t.id for t in self._pending.values())

    def is_pending(self, task_id: uuid.UUID) -> bool:
        """Whether task ``task_id`` still waits for its result; unlike ``pending``, copies nothing."""
        return task_id.int in self._pending

    @property
    def results(self) -> list[TaskResult]:
        """The results so far, in completion order."""
        return list(self._completed)

    def deliver(self, result: TaskResult) -> bool:
        """Record ``result``; ``False`` when its task already has one or isn't in the batch."""
        if self._pending.pop(result.task_id.int, None) is None:
            self.duplicates += 1
            return False
        self._completed.append(result)
        if self._waiters:
            self._wake()
        if not self._pending:
            self._settled.set()
        return True

    def fail_pending(self, code: ErrorCode) -> int:
        """End every task still waiting with error ``code``; returns how many."""
        pending = list(self._pending.values())
        now = time.monotonic()
        for task in pending:
            self.deliver(error_result(task, code, elapsed=now - self.launched_at))
        return len(pending)

    def close(self) -> None:
        self._closed = True
        self._wake()
        self._settled.set()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            # An iterator cancelled while it waited left its future behind, cancelled.
            if not waiter.done():
                waiter.set_result(None)

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"batch {self.id} is closed")

    async def __aiter__(self) -> AsyncIterator[TaskResult]:
        self._check_open()
        index = 0
        while True:
            while index < len(self._completed):
                yield self._completed[index]
                index += 1
            if not self._pending:
                return
            self._check_open()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def wait(self) -> list[TaskResult]:
        """Every result, once all are in, in completion order."""
        # One wakeup for the whole batch, where iterating would wake once per result or so.
        self._check_open()
        if self._pending:
            await self._settled.wait()
            self._check_open()
        return list(self._completed)

    def __len__(self) -> int:
        return len(self.tasks)

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self.state.value} {len(self._completed)}/{len(self.tasks)}>"
