"""The TaskRunner API in local mode: batches, cancel, close, bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from producer import BatchState, ErrorCode, HttpRequest, Task, TaskRunner, UsageError, run
from tests.behaviour.conftest import RunnerFactory
from tests.http_target import HttpTarget
from tests.remote_pools import RemotePools
from tests.waiting import eventually


def template(url: str, **fields: object) -> Task:
    return Task.model_validate({"service_name": "behaviour", "request": {"url": url}, **fields})


async def test_ten_thousand_tasks_give_ten_thousand_distinct_results(
    make_runner: RunnerFactory, target: HttpTarget, transport: str
) -> None:
    # A modest in-flight limit for httpx, whose pool slows down sharply as concurrency grows
    # (encode/httpx#3215); remote tasks wait on a round trip each, so they get more in flight. The
    # deadline leaves room for a busy machine: what is checked is that every task gets its result.
    async with make_runner(max_inflight=20 if transport == "httpx" else 500) as runner:
        tasks = runner.create_task_list(template(f"{target.http}/ok", timeout=600), 10_000)
        batch = await runner.launch(tasks)
        seen = [result async for result in batch]

    assert len(seen) == 10_000
    assert len({r.task_id for r in seen}) == 10_000
    assert {r.task_id for r in seen} == {t.id for t in tasks}
    outcomes = Counter(r.response.status_code if r.response is not None else r.outcome for r in seen)
    assert outcomes == {200: 10_000}


async def test_results_arrive_as_tasks_complete(make_runner: RunnerFactory, target: HttpTarget) -> None:
    slow = template(f"{target.http}/sleep?s=1")
    fast = template(f"{target.http}/ok")
    async with make_runner() as runner:
        batch = await runner.launch([slow, fast])
        order = [result.task_id async for result in batch]

    assert order == [fast.id, slow.id]


async def test_cancel_stops_in_flight_and_queued_tasks(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = uuid.uuid4().hex
    async with make_runner(max_inflight=4) as runner:
        tasks = runner.create_task_list(template(f"{target.http}/sleep?s=20&key={k}", timeout=30), 12)
        batch = await runner.launch(tasks)
        await eventually(lambda: target.hits(k) == 4, 10, "four tasks at the target")

        await runner.cancel(batch)

        assert not runner.check(batch)
        results = await batch.wait()
        # In-flight slots go first come, first served: a queued task sent after all would go before the next batch's.
        await (await runner.launch(runner.create_task_list(template(f"{target.http}/ok"), 4))).wait()
        hits_after_cancel = target.hits(k)

    assert len(results) == 12
    assert {r.error.code for r in results if r.error} == {ErrorCode.CANCELLED}
    assert all(r.error is not None for r in results)
    # The four in flight were cut; the eight queued were never sent.
    assert hits_after_cancel == 4


async def test_close_with_tasks_in_flight_frees_the_batch(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = uuid.uuid4().hex
    async with make_runner(max_inflight=2) as runner:
        batch = await runner.launch(runner.create_task_list(template(f"{target.http}/sleep?s=20&key={k}"), 5))
        await eventually(lambda: target.hits(k) == 2, 10, "two tasks at the target")

        await runner.close(batch)

        assert batch.state is BatchState.CLOSED
        with pytest.raises(UsageError, match=f"batch {batch.id} is closed"):
            await batch.wait()
        with pytest.raises(UsageError, match=f"batch {batch.id} is closed; launch a new task list instead"):
            await runner.launch(batch)
        # The runner itself goes on working.
        after = await (await runner.launch([template(f"{target.http}/ok")])).wait()
        assert after[0].ok
        # In-flight slots go first come, first served: a task of the closed batch sent after all went before that one.
        assert target.hits(k) == 2


async def test_check_reports_running_until_every_result_is_in(make_runner: RunnerFactory, target: HttpTarget) -> None:
    async with make_runner() as runner:
        batch = await runner.launch([template(f"{target.http}/sleep?s=0.5")])
        states = [batch.state]
        assert runner.check(batch)
        await batch.wait()
        states.append(batch.state)
        assert not runner.check(batch)

    assert states == [BatchState.RUNNING, BatchState.DONE]


async def test_ignored_tasks_are_never_sent(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = uuid.uuid4().hex
    sent = template(f"{target.http}/ok")
    ignored = template(f"{target.http}/status/200?key={k}", ignore=True)
    async with make_runner() as runner:
        batch = await runner.launch([sent, ignored])
        results = await batch.wait()

    assert [r.task_id for r in results] == [sent.id]
    assert len(batch) == 1
    assert target.hits(k) == 0


async def test_a_task_whose_deadline_passes_in_the_queue_expires_unsent(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    k = uuid.uuid4().hex
    first = template(f"{target.http}/sleep?s=1", timeout=5)
    late = template(f"{target.http}/status/200?key={k}", timeout=0.3)
    async with make_runner(max_inflight=1) as runner:
        results = {r.task_id: r for r in await (await runner.launch([first, late])).wait()}

    assert results[first.id].ok
    assert results[late.id].error is not None
    assert results[late.id].error.code is ErrorCode.EXPIRED  # type: ignore[union-attr]
    assert target.hits(k) == 0


async def test_two_batches_share_the_runner_in_flight_limit(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = uuid.uuid4().hex
    async with make_runner(max_inflight=3) as runner:
        one = await runner.launch(runner.create_task_list(template(f"{target.http}/sleep?s=0.5&key={k}"), 6))
        two = await runner.launch(runner.create_task_list(template(f"{target.http}/sleep?s=0.5&key={k}"), 6))
        await asyncio.gather(one.wait(), two.wait())

    assert target.hits(k) == 12
    assert target.peak(k) == 3


async def test_a_later_batch_gets_a_turn_before_an_earlier_one_drains(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    async with make_runner(max_inflight=2) as runner:
        long = await runner.launch(runner.create_task_list(template(f"{target.http}/sleep?s=1"), 6))
        short = await runner.launch([template(f"{target.http}/ok")])

        await short.wait()
        assert long.running
        await long.wait()


def test_create_task_list_makes_deep_copies_with_fresh_ids() -> None:
    runner = TaskRunner(service_name="Fleet_Inventory")
    source = Task(
        service_name="other",
        request=HttpRequest(url="http://127.0.0.1/x", headers=[("A", "1")], body=b"payload"),
    )

    tasks = runner.create_task_list(source, 3)
    tasks[0].request.headers.append(("B", "2"))
    tasks[1].request.url = "http://127.0.0.1/changed"

    assert len({t.id for t in tasks} | {source.id}) == 4
    assert all(t.service_name == "fleet-inventory" for t in tasks)
    assert tasks[1].request.headers == [("A", "1")]
    assert tasks[2].request.url == "http://127.0.0.1/x"
    assert source.request.headers == [("A", "1")]
    assert all(t.request.body == b"payload" for t in tasks)
    assert tasks[0].request is not tasks[1].request
    # The policy is frozen, so the copies share it: one object, not one per task.
    assert all(t.policy is source.policy for t in tasks)


def test_create_task_list_rejects_a_negative_count_and_a_non_task() -> None:
    runner = TaskRunner(service_name="svc")
    source = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/"))

    with pytest.raises(UsageError, match="n must be a non-negative integer, got -1"):
        runner.create_task_list(source, -1)
    with pytest.raises(UsageError, match="source must be a Task, got dict"):
        runner.create_task_list({"url": "http://h/"}, 2)  # type: ignore[arg-type]
    assert runner.create_task_list(source, 0) == []


async def test_launch_rejects_what_is_not_a_task_list() -> None:
    async with TaskRunner(service_name="svc") as runner:
        with pytest.raises(UsageError, match="launch takes a list of Task, got str"):
            await runner.launch("http://127.0.0.1/")  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="launch takes a list of Task; item 1 is a dict"):
            await runner.launch([Task(service_name="svc", request=HttpRequest(url="http://h/")), {}])  # type: ignore[list-item]
        one = Task(service_name="svc", request=HttpRequest(url="http://h/"))
        with pytest.raises(UsageError, match="task ids in one batch must be unique"):
            await runner.launch([one, one])


async def test_runner_is_single_use() -> None:
    runner = TaskRunner(service_name="svc")
    async with runner:
        with pytest.raises(UsageError, match="a TaskRunner can be entered once; this one is opened"):
            async with runner:
                pass
    with pytest.raises(UsageError, match="this TaskRunner was cleaned up; create a new one"):
        await runner.launch([])


def test_runner_rejects_bad_options() -> None:
    with pytest.raises(UsageError, match="mode must be 'local' or 'remote', got 'cloud'"):
        TaskRunner(service_name="svc", mode="cloud")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="max_inflight must be at least 1, got 0"):
        TaskRunner(service_name="svc", max_inflight=0)
    with pytest.raises(UsageError, match="can't form a Kafka topic name"):
        TaskRunner(service_name="bad name!")
    with pytest.raises(ValueError, match="unknown transport 'curl': choose pyreqwest or httpx"):
        TaskRunner(service_name="svc", transport="curl")


async def test_alive_in_local_mode() -> None:
    async with TaskRunner(service_name="svc") as runner:
        assert await runner.alive() is True
    assert await runner.alive() is False


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_blocking_run_returns_every_result(target: HttpTarget, mode: str, request: pytest.FixtureRequest) -> None:
    source = template(f"{target.http}/ok")
    tasks = TaskRunner(service_name="behaviour").create_task_list(source, 50)
    options: dict[str, str] = {}
    if mode == "remote":
        pools: RemotePools = request.getfixturevalue("remote_pools")
        options = {"service_name": pools.service(()), "bootstrap_servers": pools.bootstrap}

    results = run(tasks, mode=mode, **options)  # type: ignore[arg-type]

    assert len(results) == 50
    assert {r.task_id for r in results} == {t.id for t in tasks}
    assert all(r.ok for r in results)


async def test_blocking_run_refuses_to_run_inside_an_event_loop() -> None:
    with pytest.raises(UsageError, match="run\\(\\) blocks; inside an event loop use TaskRunner"):
        run([template("http://127.0.0.1/")])
