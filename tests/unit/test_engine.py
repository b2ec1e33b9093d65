"""The engine's own rules, on a MockTransport: these need no server."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from shared.engine import Engine, MockTransport, TargetAllowlist, TlsConfig, TransportFactory
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
    assert "secret" not in result.model_dump_json()
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


def test_allowlist_matches_networks_names_and_wildcards() -> None:
    allow = TargetAllowlist(["10.0.0.0/8", "::1", "bmc.local", "*.fleet.test"])

    assert allow.allows("http://10.1.2.3/x")
    assert allow.allows("https://[::1]:8443/")
    assert allow.allows("http://BMC.local/")
    assert allow.allows("http://node-1.fleet.test/")
    assert not allow.allows("http://fleet.test.evil.com/")
    assert not allow.allows("http://127.0.0.1/")
    assert not allow.allows("http://bmc.local.evil/")
    assert TargetAllowlist([]).allows("http://anything/")


def test_tls_key_without_certificate_is_rejected() -> None:
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        TlsConfig(client_key="key.pem")
