"""Local mode: the batch runs in this process on the shared engine.

Each batch gets a pool of worker coroutines, never more than the runner's in-flight limit, that
pull tasks in order. A fixed pool, rather than one asyncio task per task, keeps memory flat for
batches of 100,000 tasks. The in-flight limit is shared by every batch of the runner.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from producer.backend import Backend
from producer.batch import Batch
from shared.engine import Engine, TlsConfig
from shared.errors import ErrorCode
from shared.models import Task, TaskError, TaskResult

__all__ = ["LocalBackend"]

log = logging.getLogger(__name__)


class LocalBackend(Backend):
    """Runs batches on an in-process ``Engine``."""

    def __init__(self, engine: Engine, *, max_inflight: int) -> None:
        self._engine = engine
        self._max_inflight = max_inflight
        self._slots = asyncio.Semaphore(max_inflight)
        self._workers: dict[str, list[asyncio.Task[None]]] = {}

    async def start(self, batch: Batch) -> None:
        queue = deque(batch.tasks)
        pool_size = min(self._max_inflight, len(queue))
        workers = [asyncio.create_task(self._work(batch, queue)) for _ in range(pool_size)]
        self._workers[batch.id] = workers

    async def _work(self, batch: Batch, queue: deque[Task]) -> None:
        engine, slots, deliver, launched_at = self._engine, self._slots, batch.deliver, batch.launched_at
        while queue:
            task = queue.popleft()
            await slots.acquire()
            try:
                # The deadline counts from launch, as in remote mode, where queue time counts too.
                result = await engine.run(task, deadline=launched_at + task.timeout)
            except Exception:
                log.exception("engine failed on task %s", task.id)
                result = TaskResult(task_id=task.id, error=TaskError.of(ErrorCode.INTERNAL))
            finally:
                slots.release()
            deliver(result)

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
