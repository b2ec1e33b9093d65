"""The engine's own rules, on a MockTransport: these need no server."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from shared.engine import Engine, MockTransport, TlsConfig, TransportFactory
from shared.engine.engine import MIN_RETRY_WINDOW
from shared.errors import ErrorCode
from shared.models import HttpRequest, HttpResponse, Task


def factory(handler: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> TransportFactory:
    return lambda policy, tls: MockTransport(handler)


async def test_unexpected_transport_error_is_internal_and_its_text_stays_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("secret detail /etc/passwd")

    engine = Engine(transport=factory(broken))
    task = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/"))

    with caplog.at_level(logging.ERROR):
        result = await engine.run(task)

    assert result.error is not None
    assert result.error.code is ErrorCode.INTERNAL
    assert result.error.message == "an internal error occurred"
    assert b"secret" not in result.to_json()
    assert "secret detail" in caplog.text


async def test_a_deadline_already_passed_is_expired_and_nothing_is_sent() -> None:
    sent: list[HttpRequest] = []

    async def record(request: HttpRequest) -> HttpResponse:
        sent.append(request)
        return HttpResponse(status_code=200)

    engine = Engine(transport=factory(record))
    task = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/"))

    result = await engine.run(task, deadline=time.monotonic() - 1)

    assert result.error is not None and result.error.code is ErrorCode.EXPIRED
    assert result.attempts == 0
    assert sent == []


async def test_a_later_deadline_does_not_stretch_the_task_timeout() -> None:
    import asyncio

    async def slow(request: HttpRequest) -> HttpResponse:
        await asyncio.sleep(5)
        return HttpResponse(status_code=200)

    engine = Engine(transport=factory(slow))
    task = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/"), timeout=0.2)

    result = await engine.run(task, deadline=time.monotonic() + 60)

    assert result.error is not None and result.error.code is ErrorCode.TIMEOUT
    assert result.elapsed < 5


async def test_the_service_name_is_the_user_agent_unless_the_request_sets_one() -> None:
    seen: list[HttpRequest] = []

    async def record(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(status_code=200)

    engine = Engine(transport=factory(record))
    plain = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/", headers=[("A", "1")]))
    own = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/", headers=[("user-agent", "mine/1")]))

    await engine.run(plain)
    await engine.run(own)

    assert seen[0].headers == [("A", "1"), ("User-Agent", "svc")]
    assert seen[1].headers == [("user-agent", "mine/1")]
    # The caller's task is left as it was.
    assert plain.request.headers == [("A", "1")]


def test_tls_key_without_certificate_is_rejected() -> None:
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        TlsConfig(client_key="key.pem")


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_each_attempt_is_timed_by_method_and_status_class() -> None:
    statuses = iter([503, 204])

    async def answer(request: HttpRequest) -> HttpResponse:
        return HttpResponse(status_code=next(statuses))

    engine = Engine(transport=factory(answer))
    policy = {"retry": {"retries": 1, "backoff_initial": 0.001, "backoff_max": 0.001}}
    task = Task(service_name="svc", request=HttpRequest(method="PATCH", url="http://127.0.0.1/"), policy=policy)
    count = "trs_http_request_duration_seconds_count"
    before_5xx = _sample(count, {"method": "PATCH", "status_class": "5xx"})
    before_2xx = _sample(count, {"method": "PATCH", "status_class": "2xx"})
    retries_before = _sample("trs_http_retries_total")

    result = await engine.run(task)

    assert result.response is not None and result.response.status_code == 204
    assert _sample(count, {"method": "PATCH", "status_class": "5xx"}) == before_5xx + 1
    assert _sample(count, {"method": "PATCH", "status_class": "2xx"}) == before_2xx + 1
    assert _sample("trs_http_retries_total") == retries_before + 1


async def test_an_attempt_without_a_response_is_timed_as_error() -> None:
    async def broken(request: HttpRequest) -> HttpResponse:
        raise RuntimeError("boom")

    engine = Engine(transport=factory(broken))
    task = Task(service_name="svc", request=HttpRequest(method="OPTIONS", url="http://127.0.0.1/"))
    labels = {"method": "OPTIONS", "status_class": "error"}
    before = _sample("trs_http_request_duration_seconds_count", labels)

    await engine.run(task)

    assert _sample("trs_http_request_duration_seconds_count", labels) == before + 1


@pytest.mark.parametrize(("timeout", "attempts"), [(1.05, 1), (1.3, 2)])
async def test_a_retry_goes_only_while_its_window_of_the_deadline_is_left(timeout: float, attempts: int) -> None:
    sent: list[float] = []

    async def busy(request: HttpRequest) -> HttpResponse:
        sent.append(time.monotonic())
        return HttpResponse(status_code=429, headers=(("retry-after", "1"),))

    engine = Engine(transport=factory(busy))
    task = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/"), timeout=timeout)

    result = await engine.run(task)

    # The Retry-After puts the retry 1 s in: 0.05 s before the first deadline, under the window.
    assert (timeout - 1 < MIN_RETRY_WINDOW) is (attempts == 1)
    assert result.attempts == len(sent) == attempts
    # The last answer stands: the 429 itself, or the retries exhausted on it.
    outcome = result.response or result.error
    assert outcome is not None and outcome.status_code == 429
    # A retry that can't go isn't waited for either.
    assert result.elapsed < (0.5 if attempts == 1 else timeout)
