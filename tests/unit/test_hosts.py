"""Per-host limits on their own (shared/engine/hosts.py) and through the engine, on a MockTransport.

The behaviour suite checks the same limits against real servers in both modes; these pin the
rules: the host key, the bucket's arithmetic, the breaker's states, the bounded registry and the
policy's refusals.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from pydantic import ValidationError

from shared.engine import Engine, MockTransport
from shared.engine.hosts import BreakerState, CircuitBreaker, HostRegistry, TokenBucket, host_key
from shared.errors import ERROR_MESSAGES, ConnectFailed, ErrorCode, TaskTimeout
from shared.models import BreakerPolicy, ClientPolicy, HostPolicy, HttpRequest, HttpResponse, Task


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://BMC-1/redfish", "bmc-1:80"),
        ("http://bmc-1:80/", "bmc-1:80"),
        ("https://bmc-1?x=1", "bmc-1:443"),
        ("https://10.0.0.5:8443#top", "10.0.0.5:8443"),
        ("http://[::1]/", "[::1]:80"),
        ("http://[::1]:8080/", "[::1]:8080"),
    ],
)
def test_a_host_is_its_host_and_port_as_the_url_names_them(url: str, key: str) -> None:
    assert host_key(url) == key


def test_the_registry_finds_one_entry_per_host_however_its_urls_are_written() -> None:
    registry, policy = HostRegistry(), HostPolicy()
    bmc = registry.host("http://BMC-1/redfish/v1", policy)

    for url in ("http://bmc-1:80/other", "http://bmc-1", "http://BMC-1/redfish/v1?x=/y", "http://bmc-1?x=/y"):
        assert registry.host(url, policy) is bmc
    others = [registry.host(url, policy) for url in ("http://bmc-10/", "https://bmc-1/", "http://bmc-1:8080/")]
    assert len({id(h) for h in (bmc, *others)}) == 4
    assert len(registry) == 4


def test_a_bucket_lets_the_burst_through_then_one_token_per_interval() -> None:
    bucket = TokenBucket(rate=10.0, burst=5)

    times = [bucket.reserve(100.0) for _ in range(8)]

    assert times[:5] == [100.0] * 5
    assert times[5:] == pytest.approx([100.1, 100.2, 100.3])
    assert not bucket.full(100.0)
    assert bucket.full(100.8)


def test_a_bucket_left_alone_refills_to_its_burst_and_no_further() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    for _ in range(3):
        bucket.reserve(0.0)

    later = [bucket.reserve(60.0) for _ in range(4)]

    assert later == pytest.approx([60.0, 60.0, 60.0, 60.5])


def breaker(failures: int = 3, window: float = 10.0, cooldown: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker("bmc-1:443", BreakerPolicy(failures=failures, window=window, cooldown=cooldown))


def test_the_breaker_opens_after_n_failures_in_a_row_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    b = breaker()
    with caplog.at_level(logging.INFO, logger="shared.engine.hosts"):
        for second in range(3):
            assert b.admit(float(second))
            b.record(True, float(second), float(second))

    assert b.state is BreakerState.OPEN
    assert b.refuses(3.0)
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker for host bmc-1:443 opened after 3 connection errors or timeouts in a row;"
        " its tasks end circuit_open for 5 s"
    ]


def test_failures_of_attempts_sent_before_the_host_last_answered_do_not_count() -> None:
    # A burst against a weak server: all sent at 0, one answered at 1, a wave of drops at 2.
    b = breaker()
    b.record(False, 0.0, 1.0)
    for _ in range(10):
        b.record(True, 0.0, 2.0)
    assert b.state is BreakerState.CLOSED

    # Attempts sent after that answer that all fail open it as usual.
    for _ in range(3):
        b.record(True, 1.5, 4.0)
    assert b.refuses(4.0)


def test_a_response_between_failures_starts_the_count_again() -> None:
    b = breaker()
    for second, failed in enumerate([True, True, False, True, True]):
        b.record(failed, float(second), float(second))

    assert b.state is BreakerState.CLOSED


def test_failures_further_apart_than_the_window_do_not_open_it() -> None:
    b = breaker(window=10.0)
    for second in (0.0, 6.0, 12.0, 18.0):
        b.record(True, second, second)

    assert b.state is BreakerState.CLOSED


def test_after_the_cooldown_one_probe_goes_through_and_its_response_closes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = breaker(cooldown=5.0)
    for second in range(3):
        b.record(True, float(second), float(second))
    assert b.refuses(6.9)
    caplog.clear()

    with caplog.at_level(logging.INFO, logger="shared.engine.hosts"):
        assert b.admit(7.0)
        assert b.state is BreakerState.HALF_OPEN
        assert not b.admit(7.1)
        b.record(True, 1.5, 7.2)  # an attempt sent before the probe decides nothing
        assert b.state is BreakerState.HALF_OPEN
        b.record(False, 7.0, 7.3)

    assert b.state.value == "closed"
    assert b.admit(7.4)
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker for host bmc-1:443 closed: the probe got a response"
    ]


def test_a_failed_probe_opens_it_again_for_another_cooldown() -> None:
    b = breaker(cooldown=5.0)
    for second in range(3):
        b.record(True, float(second), float(second))
    assert b.admit(8.0)

    b.record(True, 8.0, 9.0)

    assert b.state is BreakerState.OPEN
    assert b.refuses(13.9)
    assert not b.refuses(14.0)


def test_a_cancelled_probe_lets_the_next_attempt_probe() -> None:
    b = breaker(cooldown=5.0)
    for second in range(3):
        b.record(True, float(second), float(second))
    assert b.admit(8.0)

    b.abandon(8.0)

    assert b.admit(8.5)


def test_the_registry_drops_idle_hosts_once_it_is_full() -> None:
    clock = FakeClock()
    registry = HostRegistry(max_hosts=100, clock=clock)
    policy = HostPolicy(rate_per_host=5.0)
    for n in range(20_000):
        registry.host(f"http://10.0.{n // 256}.{n % 256}/", policy)
        clock.now += 1.0

    assert len(registry) <= 200


def test_the_registry_keeps_a_host_whose_breaker_is_open() -> None:
    clock = FakeClock()
    registry = HostRegistry(max_hosts=10, clock=clock)
    policy = HostPolicy(breaker=BreakerPolicy(failures=1, cooldown=3600))
    dead = registry.host("http://dead/", policy)
    dead.breaker.record(True, clock.now, clock.now)  # type: ignore[union-attr]
    for n in range(1000):
        registry.host(f"http://host-{n}/", policy)

    assert registry.host("http://dead/", policy) is dead


def test_an_idle_host_takes_the_policy_of_the_next_task_and_a_busy_one_keeps_its_own() -> None:
    registry = HostRegistry()
    four, one = HostPolicy(max_concurrent_per_host=4), HostPolicy(max_concurrent_per_host=1)
    host = registry.host("http://bmc/", four)
    host.in_use = 1

    assert registry.host("http://bmc/", one).cap == 4
    host.in_use = 0
    assert registry.host("http://bmc/", one).cap == 1


def task(url: str = "http://127.0.0.1:9/", *, timeout: float = 10.0, **host: object) -> Task:
    return Task(
        service_name="svc",
        request=HttpRequest(url=url),
        timeout=timeout,
        policy=ClientPolicy.model_validate({"retry": {"retries": 0}, "host": host}),
    )


async def test_the_engine_holds_requests_in_flight_to_the_cap() -> None:
    in_flight, peak = 0, 0

    async def slow(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return HttpResponse(status_code=200)

    engine = Engine(transport=lambda policy, tls: MockTransport(slow))
    results = await asyncio.gather(*(engine.run(task(max_concurrent_per_host=3)) for _ in range(30)))

    assert all(r.ok for r in results)
    assert peak == 3


@pytest.mark.parametrize(("per_host", "connections_per_host", "cap"), [(None, 2, 2), (5, 2, 2), (2, 5, 2)])
async def test_the_pools_max_connections_per_host_caps_requests_in_flight_too(
    per_host: int | None, connections_per_host: int, cap: int
) -> None:
    in_flight, peak = 0, 0

    async def slow(request: HttpRequest) -> HttpResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return HttpResponse(status_code=200)

    policy = ClientPolicy.model_validate(
        {
            "retry": {"retries": 0},
            "transport": {"max_connections_per_host": connections_per_host},
            "host": {"max_concurrent_per_host": per_host},
        }
    )
    engine = Engine(transport=lambda policy, tls: MockTransport(slow))
    tasks = [Task(service_name="svc", request=HttpRequest(url="http://bmc/"), policy=policy) for _ in range(20)]
    results = await asyncio.gather(*(engine.run(t) for t in tasks))

    assert all(r.ok for r in results)
    assert peak == cap


async def test_a_task_whose_deadline_passes_while_it_waits_for_its_host_expires_unsent() -> None:
    sent: list[str] = []

    async def slow(request: HttpRequest) -> HttpResponse:
        sent.append(request.url)
        await asyncio.sleep(1.0)
        return HttpResponse(status_code=200)

    engine = Engine(transport=lambda policy, tls: MockTransport(slow))
    first = asyncio.create_task(engine.run(task("http://bmc/1", max_concurrent_per_host=1)))
    await asyncio.sleep(0)
    late = await engine.run(task("http://bmc/2", timeout=0.05, max_concurrent_per_host=1))
    first.cancel()

    assert late.error is not None and late.error.code is ErrorCode.EXPIRED
    assert late.attempts == 0
    assert sent == ["http://bmc/1"]


async def test_a_task_whose_deadline_comes_before_its_rate_token_expires_unsent() -> None:
    async def ok(request: HttpRequest) -> HttpResponse:
        return HttpResponse(status_code=200)

    engine = Engine(transport=lambda policy, tls: MockTransport(ok))
    first = await engine.run(task(rate_per_host=0.1, rate_burst=1))
    second = await engine.run(task(timeout=1.0, rate_per_host=0.1, rate_burst=1))

    assert first.ok
    assert second.error is not None and second.error.code is ErrorCode.EXPIRED


async def test_the_engine_ends_tasks_circuit_open_unsent_once_the_breaker_opens() -> None:
    sent = 0

    async def refuse(request: HttpRequest) -> HttpResponse:
        nonlocal sent
        sent += 1
        raise ConnectFailed("refused")

    engine = Engine(transport=lambda policy, tls: MockTransport(refuse))
    results = [await engine.run(task(max_concurrent_per_host=1, breaker={"failures": 3})) for _ in range(10)]

    assert [r.error.code for r in results if r.error] == [ErrorCode.CONNECT_ERROR] * 3 + [ErrorCode.CIRCUIT_OPEN] * 7
    assert sent == 3
    assert results[-1].attempts == 0
    assert results[-1].error is not None
    assert results[-1].error.message == ERROR_MESSAGES[ErrorCode.CIRCUIT_OPEN]


async def test_timeouts_open_the_breaker_and_with_it_off_every_task_is_sent() -> None:
    sent = 0

    async def hang(request: HttpRequest) -> HttpResponse:
        nonlocal sent
        sent += 1
        raise TaskTimeout("no answer")

    engine = Engine(transport=lambda policy, tls: MockTransport(hang))
    on = [await engine.run(task("http://a/", breaker={"failures": 2})) for _ in range(5)]
    sent_with_breaker, sent = sent, 0
    off = [await engine.run(task("http://b/", breaker=None)) for _ in range(5)]

    assert [r.outcome for r in on] == ["timeout", "timeout"] + ["circuit_open"] * 3
    assert sent_with_breaker == 2
    assert [r.outcome for r in off] == ["timeout"] * 5
    assert sent == 5


async def test_a_retry_after_holds_the_other_tasks_of_that_host() -> None:
    arrivals: list[tuple[str, float]] = []

    async def answer(request: HttpRequest) -> HttpResponse:
        arrivals.append((request.url, time.monotonic()))
        if request.url.endswith("/first"):
            return HttpResponse(status_code=429, headers=(("Retry-After", "1"),))
        return HttpResponse(status_code=200)

    engine = Engine(transport=lambda policy, tls: MockTransport(answer))
    first = await engine.run(task("http://bmc/first"))
    held, other = await asyncio.gather(engine.run(task("http://bmc/next")), engine.run(task("http://other/")))

    assert first.response is not None and first.response.status_code == 429
    assert held.ok and other.ok
    times = dict(arrivals)
    assert times["http://bmc/next"] - times["http://bmc/first"] >= 0.95
    assert times["http://other/"] - times["http://bmc/first"] < 0.5


def test_the_breaker_is_on_by_default_and_off_only_when_asked() -> None:
    assert HostPolicy().breaker == BreakerPolicy(failures=5, window=60.0, cooldown=30.0)
    assert HostPolicy.model_validate({"breaker": None}).breaker is None
    assert HostPolicy().max_concurrent_per_host is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_concurrent_per_host": 0}, "max_concurrent_per_host\n  Input should be greater than or equal to 1"),
        ({"rate_per_host": 0}, "rate_per_host\n  Input should be greater than 0"),
        ({"rate_per_host": 5, "rate_burst": 0}, "rate_burst\n  Input should be greater than or equal to 1"),
        ({"rate_burst": 5}, "Value error, rate_burst needs rate_per_host"),
        ({"breaker": {"failures": 0}}, "breaker.failures\n  Input should be greater than or equal to 1"),
        ({"breaker": {"cooldown": -1}}, "breaker.cooldown\n  Input should be greater than 0"),
        ({"breaker": {"window": 7200}}, "breaker.window\n  Input should be less than or equal to 3600"),
    ],
)
def test_a_host_policy_out_of_bounds_is_refused_with_its_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        HostPolicy.model_validate(fields)


def test_the_burst_defaults_to_a_second_of_the_rate() -> None:
    assert HostPolicy(rate_per_host=10).burst == 10
    assert HostPolicy(rate_per_host=0.5).burst == 1
    assert HostPolicy(rate_per_host=10, rate_burst=3).burst == 3


def test_the_run_flags_set_the_cap_and_rate_and_keep_the_rest_of_each_policy() -> None:
    from producer.host_limits import with_host_limits

    shared = ClientPolicy.model_validate({"retry": {"retries": 1}, "host": {"breaker": {"failures": 2}}})
    tasks = [Task(service_name="svc", request=HttpRequest(url="http://bmc/"), policy=shared) for _ in range(3)]

    limited = with_host_limits(tasks, per_host=2, rate_per_host=4.0)

    assert [t.id for t in limited] == [t.id for t in tasks]
    policy = limited[0].policy
    assert all(t.policy is policy for t in limited)
    assert policy.host == HostPolicy(max_concurrent_per_host=2, rate_per_host=4.0, breaker=BreakerPolicy(failures=2))
    assert policy.retry.retries == 1
    assert with_host_limits(tasks, per_host=None, rate_per_host=None) == tasks


async def test_a_retry_the_breaker_stops_ends_with_what_its_last_attempt_got() -> None:
    sent = 0

    async def refuse(request: HttpRequest) -> HttpResponse:
        nonlocal sent
        sent += 1
        raise ConnectFailed("refused")

    engine = Engine(transport=lambda policy, tls: MockTransport(refuse))
    one = Task(
        service_name="svc",
        request=HttpRequest(url="http://bmc/"),
        policy={"retry": {"retries": 3, "backoff_initial": 0.01}, "host": {"breaker": {"failures": 2}}},
    )

    result = await engine.run(one)

    assert result.error is not None and result.error.code is ErrorCode.CONNECT_ERROR
    assert (result.attempts, sent) == (2, 2)
