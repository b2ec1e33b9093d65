"""A batch's bookkeeping, without an engine: results in, waiters out."""

from __future__ import annotations

import asyncio

import pytest

from producer import Batch, HttpRequest, HttpResponse, Task, TaskResult, UsageError


def tasks(n: int) -> list[Task]:
    return [Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/")) for _ in range(n)]


def ok(task: Task) -> TaskResult:
    return TaskResult(task_id=task.id, response=HttpResponse(status_code=200), attempts=1)


async def test_wait_returns_every_result_in_completion_order_once_the_last_is_in() -> None:
    a, b, c = tasks(3)
    batch = Batch([a, b, c])
    waiting = asyncio.create_task(batch.wait())

    for task in (c, a):
        assert batch.deliver(ok(task))
        await asyncio.sleep(0)
        assert not waiting.done()
    assert not batch.deliver(ok(a))
    batch.deliver(ok(b))

    assert [r.task_id for r in await waiting] == [c.id, a.id, b.id]
    assert batch.duplicates == 1


async def test_wait_on_a_batch_closed_while_waiting_raises() -> None:
    batch = Batch(tasks(2))
    waiting = asyncio.create_task(batch.wait())
    await asyncio.sleep(0)

    batch.close()

    with pytest.raises(UsageError, match=f"batch {batch.id} is closed"):
        await waiting


async def test_iterating_yields_each_result_as_it_arrives() -> None:
    a, b = tasks(2)
    batch = Batch([a, b])
    seen: list[TaskResult] = []

    async def read() -> None:
        async for result in batch:
            seen.append(result)

    reader = asyncio.create_task(read())
    batch.deliver(ok(b))
    await asyncio.sleep(0)
    assert [r.task_id for r in seen] == [b.id]
    batch.deliver(ok(a))
    await reader

    assert [r.task_id for r in seen] == [b.id, a.id]


async def test_an_empty_batch_is_done_at_once() -> None:
    assert await Batch([]).wait() == []


def test_a_task_is_pending_until_its_result_is_in() -> None:
    a, b = tasks(2)
    batch = Batch([a, b])

    batch.deliver(ok(a))

    assert not batch.is_pending(a.id)
    assert batch.is_pending(b.id)
    assert batch.pending == frozenset({b.id})
