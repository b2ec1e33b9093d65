"""The worker serves the producer's delivery reports on its event loop, and stops if that fails."""

from __future__ import annotations

import asyncio

import pytest

from consumer.worker import Worker, WorkerConfig


class FakeProducer:
    """Counts polls; always has a result waiting for its report; raises on poll number ``fail_on``."""

    def __init__(self, *, fail_on: int | None = None, polled: int = 3) -> None:
        self.polls = 0
        self.fail_on = fail_on
        self.polled_enough = asyncio.Event()
        self._enough = polled

    def poll(self, timeout: float) -> int:
        self.polls += 1
        if self.polls == self.fail_on:
            raise RuntimeError("a delivery callback raised")
        if self.polls >= self._enough:
            self.polled_enough.set()
        return 0

    def __len__(self) -> int:
        return 1


def serving(worker: Worker, producer: FakeProducer) -> asyncio.Task[None]:
    worker._producer = producer  # type: ignore[assignment]
    task = asyncio.create_task(worker._serve_deliveries())
    task.add_done_callback(worker._deliveries_ended)
    return task


async def test_delivery_reports_are_served_over_and_over_until_the_drain_cancels_it() -> None:
    worker = Worker(WorkerConfig())
    producer = FakeProducer()

    task = serving(worker, producer)
    await producer.polled_enough.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert producer.polls >= 3
    assert worker._failure is None
    assert not worker._stop.is_set()


async def test_a_failure_serving_delivery_reports_stops_the_worker() -> None:
    # Without delivery reports no offset would ever be done again; the worker exits 1 instead of stalling.
    worker = Worker(WorkerConfig())

    task = serving(worker, FakeProducer(fail_on=1))
    with pytest.raises(RuntimeError):
        await task
    await asyncio.sleep(0)

    assert isinstance(worker._failure, RuntimeError)
    assert worker._stop.is_set()
