"""A blocking facade for scripts: ``run(tasks)`` returns every result."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from producer.runner import Mode, TaskRunner
from shared.errors import UsageError
from shared.event_loop import event_loop_runner
from shared.models import Task, TaskResult

__all__ = ["run"]


def run(
    tasks: Sequence[Task], *, mode: Mode = "local", service_name: str | None = None, **options: Any
) -> list[TaskResult]:
    """Run ``tasks`` as one batch and return every result, in completion order.

    Uses uvloop when it is installed. ``service_name`` defaults to the first task's;
    ``options`` go to ``TaskRunner``.
    """
    if not tasks and service_name is None:
        return []
    name = service_name or tasks[0].service_name
    if _running_loop():
        raise UsageError("run() blocks; inside an event loop use TaskRunner with 'async with' instead")

    async def main() -> list[TaskResult]:
        async with TaskRunner(mode=mode, service_name=name, **options) as runner:
            batch = await runner.launch(tasks)
            return await batch.wait()

    with event_loop_runner() as runner:
        return runner.run(main())


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
