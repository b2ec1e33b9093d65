"""Local mode: the batch runs in this process on the shared engine.

Each batch gets a pool of worker coroutines, never more than the runner's in-flight limit, that
pull tasks in order. A fixed pool, rather than one asyncio task per task, keeps memory flat for
batches of 100,000 tasks. The in-flight limit is shared by every batch of the runner: a worker
runs tasks only while it holds one of the runner's slots.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from producer.backend import Backend
from producer.batch import Batch
from shared.engine import Engine, TlsConfig
from shared.errors import ErrorCode
from shared.models import Task, error_result

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)


class InflightSlots:
    """The runner's in-flight limit: ``limit`` slots, handed out first come first served.

    A worker keeps its slot from one task to the next while nobody waits for one (``wanted`` is
    false), so a batch running alone pays no semaphore round per task. Once another worker waits,
    the holder hands its slot over after its current task and queues for the next free one, so the
    batches of a runner take turns as they would on a semaphore taken per task.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        #: The workers waiting for a slot, in line; a worker reads it after every task, and a property would
        #: cost a call each time.
        self.waiting: deque[asyncio.Future[None]] = deque()

    @property
    def wanted(self) -> bool:
        """Whether some worker is waiting for a slot."""
        return bool(self.waiting)

    async def acquire(self) -> None:
        """Take a slot, waiting in line behind the workers already waiting."""
        if self._free and not self.waiting:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as this wait was cancelled: pass it on.
                self.release()
            elif waiter in self.waiting:
                self.waiting.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back, straight to the longest-waiting worker if there is one."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class LocalBackend(Backend):
    """Runs batches on an in-process ``Engine``."""

    def __init__(self, engine: Engine, *, max_inflight: int) -> None:
        self._engine = engine
        self._max_inflight = max_inflight
        self._slots = InflightSlots(max_inflight)
        self._workers: dict[str, list[asyncio.Task[None]]] = {}

    async def start(self, batch: Batch) -> None:
        queue = deque(batch.tasks)
        workers: list[asyncio.Task[None]] = []
        self._workers[batch.id] = workers
        if queue:
            workers.append(asyncio.create_task(self._work(batch, queue)))
            if len(queue) > 1:
                # Scheduled after the first worker's first step, which lasts until one of its tasks waits: tasks
                # that end without waiting (refused, expired, circuit_open, a transport that answers at once)
                # then need no pool, which costs about 2 us a worker to start and to end.
                asyncio.get_running_loop().call_soon(self._start_pool, batch, queue, workers)

    def _start_pool(self, batch: Batch, queue: deque[Task], workers: list[asyncio.Task[None]]) -> None:
        """Start the rest of ``batch``'s workers, as many as its tasks left and the in-flight limit allow."""
        if self._workers.get(batch.id) is not workers:
            return  # cancelled or closed meanwhile
        more = min(self._max_inflight - len(workers), len(queue))
        workers.extend(asyncio.create_task(self._work(batch, queue)) for _ in range(more))

    async def _work(self, batch: Batch, queue: deque[Task]) -> None:
        engine, slots, deliver, launched_at = self._engine, self._slots, batch.deliver, batch.launched_at
        waiting = slots.waiting
        await slots.acquire()
        holding = True
        try:
            while queue:
                task = queue.popleft()
                try:
                    # The deadline counts from launch, as in remote mode, where queue time counts too. The
                    # timeout is read from the task's dict, as the engine reads its fields (it says why).
                    result = await engine.run(task, deadline=launched_at + task.__dict__["timeout"])
                except Exception:
                    log.exception("engine failed on task %s", task.id)
                    result = error_result(task, ErrorCode.INTERNAL)
                deliver(result)
                if waiting and queue:
                    # Another batch's worker waits: take turns, as a slot per task would.
                    holding = False
                    slots.release()
                    await slots.acquire()
                    holding = True
        finally:
            if holding:
                slots.release()

    async def cancel(self, batch: Batch) -> None:
        workers = self._workers.pop(batch.id, [])
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        batch.fail_pending(ErrorCode.CANCELLED)

    async def close(self, batch: Batch) -> None:
        await self.cancel(batch)

    async def alive(self, timeout: float) -> bool:
        return True

    def set_security(self, tls: TlsConfig) -> None:
        self._engine.set_tls(tls)

    async def aclose(self) -> None:
        for batch_id in list(self._workers):
            for worker in self._workers.pop(batch_id):
                worker.cancel()
        await self._engine.aclose()
