"""Per-host limits against real servers on loopback, in both modes: the cap, the rate, a host-wide
Retry-After and the circuit breaker.

What a host saw is read from the host itself: the target counts its open requests and records
when each request arrived, and a counting proxy in front of it counts connection attempts.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from producer import ErrorCode, HttpRequest, Task, TaskResult, TaskRunner
from tests.behaviour.conftest import RunnerFactory
from tests.counting_proxy import CountingProxy, counting_proxy
from tests.http_target import HttpTarget
from tests.remote_pools import RemotePools


def task(url: str, *, retries: int = 3, timeout: float = 20.0, **host: Any) -> Task:
    return Task(
        service_name="behaviour",
        request=HttpRequest(url=url),
        timeout=timeout,
        policy={"retry": {"retries": retries, "backoff_initial": 0.01, "backoff_max": 1.0}, "host": host},
    )


async def run(runner: TaskRunner, tasks: list[Task]) -> list[TaskResult]:
    by_id = {r.task_id: r for r in await (await runner.launch(tasks)).wait()}
    return [by_id[t.id] for t in tasks]


def most_in_any_window(arrivals: list[float], seconds: float) -> int:
    """The most arrivals that fall in any window of ``seconds`` (both ends included)."""
    ordered = sorted(arrivals)
    return max(sum(1 for t in ordered[i:] if t - start <= seconds) for i, start in enumerate(ordered))


async def test_a_host_never_sees_more_requests_at_once_than_its_cap(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    k = uuid.uuid4().hex
    one = task(f"{target.http}/sleep?s=0.05&key={k}", max_concurrent_per_host=4)

    async with make_runner() as runner:
        results = await run(runner, runner.create_task_list(one, 200))

    assert Counter(r.outcome for r in results) == {"response": 200}
    assert target.hits(k) == 200
    # Four at once shows the cap was reached; more would break it.
    assert target.peak(k) == 4


async def test_a_rate_of_ten_a_second_with_a_burst_of_five_never_puts_fifteen_in_one_second(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    k = uuid.uuid4().hex
    one = task(f"{target.http}/status/200?key={k}", rate_per_host=10, rate_burst=5)

    async with make_runner() as runner:
        results = await run(runner, runner.create_task_list(one, 35))

    assert Counter(r.outcome for r in results) == {"response": 35}
    arrivals = target.arrivals(k)
    assert len(arrivals) == 35
    assert most_in_any_window(arrivals, 1.0) <= 15
    # The burst, then 30 more at 10 a second: about 3 s in all, so the limit did hold them back.
    assert max(arrivals) - min(arrivals) >= 2.7


async def test_a_retry_after_holds_every_task_queued_for_that_host(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    k = uuid.uuid4().hex
    # The first request of the key gets 429 with Retry-After: 2, every later one 200; one at a time,
    # so the other nine are queued when it comes back.
    one = task(f"{target.http}/retry-after?key={k}&after=2&times=1", max_concurrent_per_host=1)

    async with make_runner() as runner:
        results = await run(runner, runner.create_task_list(one, 10))

    assert Counter(r.outcome for r in results) == {"response": 10}
    assert sorted(r.attempts for r in results) == [1] * 9 + [2]
    arrivals = sorted(target.arrivals(k))
    assert len(arrivals) == 11
    held = arrivals[1] - arrivals[0]
    assert 1.8 <= held <= 4.0, f"the host was held {held:.2f} s"
    # Once the hold is over, the queue goes on at once.
    assert arrivals[-1] - arrivals[1] < 2.0


def _breaker_log(mode: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> str:
    if mode == "remote":
        pools: RemotePools = request.getfixturevalue("remote_pools")
        return pools.worker(()).log()
    return caplog.text


async def _probe_until_it_goes_through(runner: TaskRunner, probe: Task, proxy: CountingProxy) -> list[TaskResult]:
    """Send ``probe`` alone until the breaker lets one through; every refusal must be unsent."""
    deadline = time.monotonic() + 15
    refused: list[TaskResult] = []
    while time.monotonic() < deadline:
        before = proxy.connections
        (result,) = await run(runner, runner.create_task_list(probe, 1))
        if result.outcome != "circuit_open":
            return [*refused, result]
        assert proxy.connections == before
        refused.append(result)
        await asyncio.sleep(0.2)
    raise AssertionError("no probe went through within 15 s of the breaker opening")


async def test_a_refusing_host_opens_its_breaker_and_healthy_hosts_go_on(
    make_runner: RunnerFactory,
    target: HttpTarget,
    mode: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="shared.engine.hosts")
    k = uuid.uuid4().hex
    limits: dict[str, Any] = {"max_concurrent_per_host": 1, "breaker": {"failures": 3, "window": 60, "cooldown": 2}}
    healthy = task(f"{target.http}/status/200?key={k}", retries=0, **limits)
    with counting_proxy(target.http) as proxy:
        dead = task(f"{proxy.url}/ok", retries=0, **limits)
        host = proxy.url.removeprefix("http://")
        async with make_runner() as runner:
            results = await run(runner, runner.create_task_list(dead, 12) + runner.create_task_list(healthy, 12))
            dead_results, healthy_results = results[:12], results[12:]

            assert Counter(r.outcome for r in dead_results) == {"connect_error": 3, "circuit_open": 9}
            assert proxy.connections == 3
            for result in dead_results:
                if result.error is not None and result.error.code is ErrorCode.CIRCUIT_OPEN:
                    assert result.attempts == 0
                    assert result.error.message == (
                        "the target host keeps failing, so its circuit breaker is open; the task was not sent"
                    )
            assert Counter(r.outcome for r in healthy_results) == {"response": 12}
            assert target.hits(k) == 12

            # The host comes back; after the cool-down one probe finds it and closes the breaker.
            proxy.refusing = False
            probes = await _probe_until_it_goes_through(runner, dead, proxy)
            assert probes[-1].outcome == "response"
            assert proxy.connections == 4
            assert proxy.arrivals[3] - proxy.arrivals[2] >= 1.9
            after = await run(runner, runner.create_task_list(dead, 5))
            assert Counter(r.outcome for r in after) == {"response": 5}

    log = _breaker_log(mode, request, caplog)
    assert len(re.findall(rf"circuit breaker for host {re.escape(host)} opened after 3 ", log)) == 1
    assert len(re.findall(rf"circuit breaker for host {re.escape(host)} closed: the probe got a response", log)) == 1
