"""The API refuses what it can't honour, each with a ``UsageError`` that says why."""

from __future__ import annotations

import asyncio

import pytest

from producer import (
    ConnectFailed,
    ErrorCode,
    HttpRequest,
    HttpResponse,
    MockTransport,
    Task,
    TaskRunner,
    TlsConfig,
    Transport,
    TransportPolicy,
    UsageError,
    create_task_list,
)
from tests.behaviour.conftest import RunnerFactory
from tests.http_target import HttpTarget


def template(url: str, **fields: object) -> Task:
    return Task.model_validate({"service_name": "behaviour", "request": {"url": url}, **fields})


@pytest.mark.parametrize(
    ("option", "value"),
    [("result_grace", 1.0), ("request_timeout", 3.0), ("partition_key", "host")],
)
def test_a_remote_only_option_is_refused_in_local_mode(option: str, value: object) -> None:
    with pytest.raises(UsageError, match=f"^{option} only applies in remote mode$"):
        TaskRunner(mode="local", service_name="svc", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_a_bad_partition_key_is_refused_in_both_modes(mode: str) -> None:
    with pytest.raises(UsageError, match=r"^partition_key must be 'task' or 'host', got 'bogus'$"):
        TaskRunner(mode=mode, service_name="svc", partition_key="bogus")  # type: ignore[arg-type]


def test_an_unknown_transport_name_is_refused() -> None:
    with pytest.raises(UsageError, match=r"^unknown transport 'curl': choose pyreqwest or httpx$"):
        TaskRunner(mode="local", service_name="svc", transport="curl")


def test_a_transport_that_is_neither_a_name_nor_a_transport_is_refused() -> None:
    with pytest.raises(
        UsageError, match=r"^transport must be a name, a Transport or a callable that builds one, got int$"
    ):
        TaskRunner(mode="local", service_name="svc", transport=3)  # type: ignore[arg-type]


async def test_every_use_of_a_closed_batch_raises(make_runner: RunnerFactory, target: HttpTarget) -> None:
    async with make_runner() as runner:
        batch = await runner.launch([template(f"{target.http}/ok")])
        await batch.wait()
        await runner.close(batch)

        closed = f"^batch {batch.id} is closed$"
        with pytest.raises(UsageError, match=closed):
            runner.check(batch)
        with pytest.raises(UsageError, match=closed):
            await runner.cancel(batch)
        with pytest.raises(UsageError, match=closed):
            await runner.close(batch)
        with pytest.raises(UsageError, match=closed):
            await anext(aiter(batch))
        with pytest.raises(UsageError, match=closed):
            await batch.wait()
        # What it held stays readable.
        assert [r.ok for r in batch.results] == [True]


async def test_a_batch_of_another_runner_is_refused(make_runner: RunnerFactory, target: HttpTarget) -> None:
    async with make_runner() as runner, make_runner() as other:
        batch = await runner.launch([template(f"{target.http}/ok")])
        with pytest.raises(UsageError, match=f"^batch {batch.id} was not launched by this runner$"):
            other.check(batch)
        with pytest.raises(UsageError, match=f"^batch {batch.id} was not launched by this runner$"):
            await other.close(batch)
        await batch.wait()


async def test_tasks_still_running_in_a_batch_are_refused(make_runner: RunnerFactory, target: HttpTarget) -> None:
    async with make_runner() as runner:
        tasks = runner.create_task_list(template(f"{target.http}/sleep?s=2", timeout=10), 3)
        running = await runner.launch(tasks)
        with pytest.raises(
            UsageError,
            match=rf"^task {tasks[0].id} is still running in batch {running.id}; "
            r"launch copies of it \(create_task_list\) instead$",
        ):
            await runner.launch(tasks)
        # Copies are new tasks, and the same tasks may go again once their batch is over.
        copies = await runner.launch(runner.create_task_list(tasks[0], 3))
        await asyncio.gather(running.wait(), copies.wait())
        again = await (await runner.launch(tasks)).wait()

    assert sorted(r.task_id for r in again) == sorted(t.id for t in tasks)


def test_create_task_list_needs_no_runner() -> None:
    source = template("http://127.0.0.1:9/", timeout=3)
    copies = create_task_list(source, 3)
    renamed = create_task_list(source, 2, service_name="Other_Service")

    assert len({c.id for c in copies} | {source.id}) == 4
    assert [(c.service_name, c.request.url, c.timeout) for c in copies] == [("behaviour", "http://127.0.0.1:9/", 3)] * 3
    assert all(c.policy is source.policy for c in copies)
    assert [c.service_name for c in renamed] == ["other-service"] * 2
    with pytest.raises(UsageError, match=r"^n must be a non-negative integer, got -1$"):
        create_task_list(source, -1)
    with pytest.raises(UsageError, match=r"^source must be a Task, got dict$"):
        create_task_list({"url": "http://127.0.0.1/"}, 1)  # type: ignore[arg-type]


async def test_a_mock_transport_answers_every_request_with_its_handler() -> None:
    seen: list[HttpRequest] = []

    def handler(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(status_code=201, body=request.url.encode())

    async with TaskRunner(mode="local", service_name="inventory", transport=MockTransport(handler)) as runner:
        tasks = runner.create_task_list(template("http://bmc-0.fleet.local/redfish/v1"), 2)
        results = await (await runner.launch(tasks)).wait()

    assert [(r.response.status_code, r.response.body) for r in results if r.response] == [
        (201, b"http://bmc-0.fleet.local/redfish/v1")
    ] * 2
    assert [r.header("user-agent") for r in seen] == ["inventory", "inventory"]


async def test_a_mock_transport_plays_a_failing_target_the_engine_retries() -> None:
    calls = 0

    async def handler(request: HttpRequest) -> HttpResponse:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectFailed("refused")
        return HttpResponse(status_code=200)

    policy = {"retry": {"retries": 3, "backoff_initial": 0.01, "backoff_max": 0.02}}
    async with TaskRunner(mode="local", service_name="svc", transport=MockTransport(handler)) as runner:
        (flaky,) = await (await runner.launch([template("http://10.0.0.1/", policy=policy)])).wait()
        calls = -10
        (down,) = await (await runner.launch([template("http://10.0.0.1/", policy=policy)])).wait()

    assert (flaky.response is not None, flaky.attempts) == (True, 3)
    assert (down.error is not None and down.error.code, down.attempts) == (ErrorCode.CONNECT_ERROR, 4)


async def test_a_transport_factory_builds_the_transport_for_each_policy() -> None:
    built: list[TransportPolicy] = []

    def factory(policy: TransportPolicy, tls: TlsConfig) -> Transport:
        built.append(policy)
        return MockTransport(lambda request: HttpResponse(status_code=204))

    slow = {"transport": {"response_header_timeout": 5}}
    async with TaskRunner(mode="local", service_name="svc", transport=factory) as runner:
        results = await (
            await runner.launch([template("http://10.0.0.1/"), template("http://10.0.0.2/", policy=slow)])
        ).wait()

    assert sorted(r.response.status_code for r in results if r.response) == [204, 204]
    assert sorted(p.response_header_timeout or 0 for p in built) == [0, 5]


async def test_the_allowlist_error_in_local_mode_does_not_speak_of_a_worker() -> None:
    mock = MockTransport(lambda request: HttpResponse(status_code=200))
    async with TaskRunner(mode="local", service_name="svc", transport=mock, allowed_targets=["10.0.0.0/8"]) as runner:
        (result,) = await (await runner.launch([template("http://192.168.1.1/")])).wait()

    assert result.error is not None
    assert (result.error.code, result.error.message) == (
        ErrorCode.TARGET_NOT_ALLOWED,
        "the target is not on the allowlist",
    )
    assert "worker" not in result.error.message
