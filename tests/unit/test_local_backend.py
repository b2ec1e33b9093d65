"""Local mode's pool of workers, on a MockTransport: one result per task whether or not the tasks wait."""

from __future__ import annotations

import asyncio

from producer.batch import Batch
from producer.local import LocalBackend
from shared.engine import Engine, MockTransport, TlsConfig, Transport
from shared.errors import ErrorCode
from shared.models import HttpRequest, HttpResponse, Task, TransportPolicy
from tests.waiting import eventually


def backend(transport: Transport, max_inflight: int) -> LocalBackend:
    def factory(policy: TransportPolicy, tls: TlsConfig) -> Transport:
        return transport

    return LocalBackend(Engine(transport=factory), max_inflight=max_inflight)


def tasks(count: int) -> list[Task]:
    return [Task(service_name="svc", request=HttpRequest(url=f"http://127.0.0.1/{n}")) for n in range(count)]


async def test_tasks_answered_at_once_each_get_one_result() -> None:
    sent: list[str] = []

    def answer(request: HttpRequest) -> HttpResponse:
        sent.append(request.url)
        return HttpResponse(200)

    local = backend(MockTransport(answer), max_inflight=3)
    batch = Batch(tasks(50))
    await local.start(batch)
    results = await batch.wait()
    await local.aclose()

    assert sorted(r.task_id for r in results) == sorted(t.id for t in batch.tasks)
    assert all(r.ok for r in results)
    assert len(sent) == 50


async def test_tasks_that_wait_fill_the_in_flight_limit_and_no_more() -> None:
    release = asyncio.Event()
    in_flight, peak = 0, 0

    async def held(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return HttpResponse(200)

    local = backend(MockTransport(held), max_inflight=4)
    batch = Batch(tasks(10))
    await local.start(batch)
    await eventually(lambda: in_flight == 4, 5, "four tasks in flight")
    release.set()
    results = await batch.wait()
    await local.aclose()

    assert len(results) == 10
    assert all(r.ok for r in results)
    assert peak == 4


async def test_a_batch_cancelled_before_its_pool_starts_ends_every_task_cancelled() -> None:
    sent: list[str] = []

    async def never(request: HttpRequest) -> HttpResponse:
        sent.append(request.url)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    local = backend(MockTransport(never), max_inflight=4)
    batch = Batch(tasks(10))
    await local.start(batch)
    await local.cancel(batch)
    results = await batch.wait()

    assert len(results) == 10
    assert {r.error.code for r in results if r.error} == {ErrorCode.CANCELLED}
    assert sent == []
    # The callback that would have started the rest of the pool ran while cancel waited, and found the batch gone.
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await local.aclose()
