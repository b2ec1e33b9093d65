"""The ramp (``RampPolicy``): how fast the engine raises the requests in flight to one host.

A fresh host gets ``initial`` requests at once; while tasks wait, a timer raises its level at
``per_second`` (doubling every 100 ms until the host first answers), and each answer raises it by
one while the answers account for what is in flight (Little's law), not while requests are stuck.
These run the engine on a ``MockTransport`` whose handler counts what is in flight; the
weak-server tests in the behaviour suite check the same against ``python3 -m http.server``.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from pydantic import ValidationError

from shared.engine import Engine, MockTransport
from shared.engine import hosts as hosts_module
from shared.engine.hosts import RAMP_IDLE_RESET, HostRegistry
from shared.models import ClientPolicy, HostPolicy, HttpRequest, HttpResponse, RampPolicy, Task
from tests.waiting import eventually


class InFlight:
    """A handler that counts the requests in flight and answers each once ``answer`` allows it."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.gate = asyncio.Event()

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await self.gate.wait()
            return HttpResponse(status_code=200)
        finally:
            self.now -= 1


def task(*, timeout: float = 10.0, **host: object) -> Task:
    return Task(
        service_name="svc",
        request=HttpRequest(url="http://bmc/"),
        timeout=timeout,
        policy=ClientPolicy.model_validate({"retry": {"retries": 0}, "host": host}),
    )


async def test_a_fresh_host_gets_the_initial_level_and_no_more_before_its_ramp_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A tick long enough that nothing but the initial level can be in flight when it is counted.
    monkeypatch.setattr(hosts_module, "RAMP_TICK", 3600.0)
    target = InFlight()
    engine = Engine(transport=lambda policy, tls: MockTransport(target))
    runs = [asyncio.create_task(engine.run(task())) for _ in range(100)]
    await eventually(lambda: target.now == RampPolicy().initial, 5, "the initial level in flight")
    for _ in range(10):
        await asyncio.sleep(0)
    assert target.peak == RampPolicy().initial
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)


async def test_a_host_that_has_not_answered_yet_gets_the_whole_burst_from_the_timer() -> None:
    # Nothing is answered: only the timer's pace (5 more every 10 ms, doubling every 100 ms) lets the rest in.
    target = InFlight()
    engine = Engine(transport=lambda policy, tls: MockTransport(target))
    runs = [asyncio.create_task(engine.run(task())) for _ in range(100)]
    await eventually(lambda: target.now == 100, 5, "the whole burst in flight")
    target.gate.set()
    assert all(r.ok for r in await asyncio.gather(*runs))


def _keep_the_loop_busy(seconds: float) -> None:
    """Work on the event loop's thread for ``seconds``, as a loop running thousands of tasks does."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


async def test_a_timer_step_that_runs_late_lets_in_one_steps_worth(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client loop too busy to take its steps on time ramps slower: the pace is counted in steps.
    monkeypatch.setattr(hosts_module, "RAMP_TICK", 0.1)  # a step of 40 at 400 a second, 100 ms apart
    target = InFlight()
    engine = Engine(transport=lambda policy, tls: MockTransport(target))
    ramp = {"initial": 1, "per_second": 400.0}
    runs = [asyncio.create_task(engine.run(task(ramp=ramp))) for _ in range(500)]
    await asyncio.sleep(0)  # every run takes its first step: one goes, the rest wait and arm the timer
    assert target.now == 1
    _keep_the_loop_busy(0.5)  # so the timer's first step runs 400 ms late
    await eventually(lambda: target.now > 1, 5, "the timer's first step")
    # One step (or two, should this test be slow to look) lets in 40 each, not the 200 that 0.5 s would earn.
    assert target.now in (1 + 40, 1 + 80)
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)


async def test_with_the_ramp_off_the_whole_burst_goes_at_once() -> None:
    target = InFlight()
    engine = Engine(transport=lambda policy, tls: MockTransport(target))
    runs = [asyncio.create_task(engine.run(task(ramp=None))) for _ in range(100)]
    await eventually(lambda: target.now == 100, 5, "the whole burst in flight")
    target.gate.set()
    assert all(r.ok for r in await asyncio.gather(*runs))


async def test_answers_that_account_for_what_is_in_flight_raise_the_level() -> None:
    in_flight, peak = 0, 0

    async def quick(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return HttpResponse(status_code=200)

    # The timer's pace is set to next to nothing: only the answers can raise the level.
    engine = Engine(transport=lambda policy, tls: MockTransport(quick))
    results = await asyncio.gather(*(engine.run(task(ramp={"per_second": 1})) for _ in range(400)))

    assert all(r.ok for r in results)
    # Every answer takes 5 ms whatever is in flight: a host that keeps up, so the level keeps rising.
    assert peak > 100


async def test_requests_that_get_stuck_stop_the_level_rising() -> None:
    # Every third request is never answered, as a weak server's overflowed backlog leaves it; the rest
    # take 2 ms. Answers then account for ever fewer of the requests in flight.
    count = itertools.count()
    in_flight, peak = 0, 0
    stuck = asyncio.Event()

    async def weak(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            if next(count) % 3 == 0:
                await stuck.wait()
            await asyncio.sleep(0.002)
            return HttpResponse(status_code=200)
        finally:
            in_flight -= 1

    # The timer's pace is set to next to nothing: what is left to raise the level is the answers.
    engine = Engine(transport=lambda policy, tls: MockTransport(weak))
    await asyncio.gather(*(engine.run(task(timeout=1.0, ramp={"per_second": 1})) for _ in range(300)))
    ramp_peak = peak

    peak, count = 0, itertools.count()
    engine = Engine(transport=lambda policy, tls: MockTransport(weak))
    await asyncio.gather(*(engine.run(task(timeout=1.0, ramp=None)) for _ in range(300)))

    assert peak == 300
    assert ramp_peak < 100, ramp_peak


async def test_the_cap_holds_below_the_ramps_level() -> None:
    target = InFlight()
    engine = Engine(transport=lambda policy, tls: MockTransport(target))
    runs = [asyncio.create_task(engine.run(task(max_concurrent_per_host=3))) for _ in range(20)]
    await eventually(lambda: target.now == 3, 5, "the cap in flight")
    for _ in range(10):
        await asyncio.sleep(0)
    assert target.peak == 3
    target.gate.set()
    assert all(r.ok for r in await asyncio.gather(*runs))


async def test_a_host_idle_for_a_minute_starts_again_from_the_initial_level() -> None:
    clock = [1000.0]
    registry = HostRegistry(clock=lambda: clock[0])
    host = registry.host("http://bmc/", HostPolicy())
    initial = RampPolicy().initial
    for _ in range(initial):
        assert host.enter_at_once(clock[0])
    assert not host.enter_at_once(clock[0])

    # Two answers that keep up while tasks wait raise the level by one (the first only starts the averages).
    waiting = [asyncio.create_task(host.enter(clock[0] + 10, sent_before=False)) for _ in range(2)]
    await asyncio.sleep(0)
    for _ in range(2):
        host.leave(HttpResponse(status_code=200), clock[0] - 0.01, clock[0], honor_retry_after=True)
        clock[0] += 0.001
    assert await asyncio.gather(*waiting) == [None, None]
    assert host.level == initial + 1
    while host.in_use:
        host.leave(HttpResponse(status_code=200), clock[0] - 0.01, clock[0], honor_retry_after=True)

    clock[0] += RAMP_IDLE_RESET - 1
    assert host.enter_at_once(clock[0])
    assert host.level == initial + 1
    host.leave(HttpResponse(status_code=200), clock[0], clock[0], honor_retry_after=True)

    clock[0] += RAMP_IDLE_RESET
    assert host.enter_at_once(clock[0])
    assert host.level == initial


@pytest.mark.parametrize(
    ("ramp", "message"),
    [
        ({"initial": 0}, "greater than or equal to 1"),
        ({"per_second": 0}, "greater than 0"),
        ({"initial": 8, "rate": 100}, "Extra inputs are not permitted"),
    ],
)
def test_a_ramp_policy_out_of_bounds_is_refused_with_its_reason(ramp: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HostPolicy.model_validate({"ramp": ramp})


def test_an_unknown_key_in_a_host_or_breaker_policy_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_concurent_per_host"):
        HostPolicy.model_validate({"max_concurent_per_host": 4})
    with pytest.raises(ValidationError, match="failure"):
        HostPolicy.model_validate({"breaker": {"failure": 3}})
