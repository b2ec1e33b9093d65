"""What a task does, end to end, against a real HTTP(S) server on loopback.

Every test runs in local mode on each shipped transport and in remote mode through a real broker
and worker (see ``make_runner`` in conftest.py), with the same assertions.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from producer import ClientPolicy, ErrorCode, HttpRequest, RetryPolicy, Task, TaskResult, TlsConfig, UsageError
from producer.dev.embedded_broker import free_port
from tests.behaviour.conftest import RunnerFactory
from tests.conftest import Certs
from tests.http_target import HttpTarget


def task(url: str, *, timeout: float = 10.0, retries: int = 3, backoff: float = 0.01, **request: Any) -> Task:
    return Task(
        service_name="behaviour",
        request=HttpRequest(url=url, **request),
        timeout=timeout,
        policy={"retry": {"retries": retries, "backoff_initial": backoff, "backoff_max": max(backoff, 1.0)}},
    )


async def run_one(make_runner: RunnerFactory, one: Task, **options: Any) -> TaskResult:
    async with make_runner(**options) as runner:
        batch = await runner.launch([one])
        results = await batch.wait()
    assert len(results) == 1
    assert results[0].task_id == one.id
    return results[0]


def key() -> str:
    return uuid.uuid4().hex


async def test_response_keeps_status_repeated_headers_and_body(make_runner: RunnerFactory, target: HttpTarget) -> None:
    result = await run_one(make_runner, task(f"{target.http}/cookies"))

    assert result.ok
    assert result.response is not None
    assert result.response.status_code == 200
    assert [v for k, v in result.response.headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]
    assert result.response.body == b"cookies"
    assert result.attempts == 1


async def test_request_sends_method_repeated_headers_and_binary_body(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    body = bytes(range(256)) * 4
    one = task(f"{target.http}/echo", method="PUT", headers=[("X-Dup", "1"), ("X-Dup", "2")], body=body)

    result = await run_one(make_runner, one)

    assert result.response is not None
    echoed = json.loads(result.response.body)
    assert echoed["method"] == "PUT"
    assert [v for k, v in echoed["headers"] if k.lower() == "x-dup"] == ["1", "2"]
    assert base64.b64decode(echoed["body"]) == body


async def test_user_agent_defaults_to_the_service_name(make_runner: RunnerFactory, target: HttpTarget) -> None:
    async with make_runner() as runner:
        batch = await runner.launch(
            [task(f"{target.http}/echo"), task(f"{target.http}/echo", headers=[("User-Agent", "mine/1")])]
        )
        default, custom = sorted(await batch.wait(), key=lambda r: r.task_id == batch.tasks[1].id)
        service = runner.service_name

    assert default.response is not None and custom.response is not None
    default_ua = [v for k, v in json.loads(default.response.body)["headers"] if k.lower() == "user-agent"]
    custom_ua = [v for k, v in json.loads(custom.response.body)["headers"] if k.lower() == "user-agent"]
    assert default_ua == [service]
    assert custom_ua == ["mine/1"]


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_retryable_status_is_retried_exactly_retries_times(
    make_runner: RunnerFactory, target: HttpTarget, status: int
) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/status/{status}?key={k}", retries=3))

    assert result.error is not None
    assert result.error.code is ErrorCode.RETRIES_EXHAUSTED
    assert result.error.status_code == status
    assert result.attempts == 4
    assert target.hits(k) == 4


async def test_default_policy_really_retries_three_times(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()
    one = Task(service_name="behaviour", request=HttpRequest(url=f"{target.http}/status/503?key={k}"))

    result = await run_one(make_runner, one)

    assert result.attempts == 4
    assert target.hits(k) == 4


async def test_retry_then_success_returns_the_success(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/status/503?key={k}&times=2", retries=3))

    assert result.response is not None
    assert result.response.status_code == 200
    assert result.attempts == 3
    assert target.hits(k) == 3


async def test_501_is_not_retried(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/status/501?key={k}", retries=3))

    assert result.response is not None
    assert result.response.status_code == 501
    assert result.attempts == 1
    assert target.hits(k) == 1


async def test_zero_retries_returns_the_retryable_response(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/status/503?key={k}", retries=0))

    assert result.response is not None
    assert result.response.status_code == 503
    assert target.hits(k) == 1


async def test_client_errors_are_not_retried(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/status/404?key={k}"))

    assert result.response is not None
    assert result.response.status_code == 404
    assert target.hits(k) == 1


async def test_retry_after_inside_the_deadline_is_honoured(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/retry-after?key={k}&after=1&times=1", timeout=5))

    assert result.response is not None
    assert result.response.status_code == 200
    assert result.attempts == 2
    # The server asked for one second; the computed backoff alone would be ~10 ms.
    assert result.elapsed >= 1.0


async def test_retry_after_beyond_the_deadline_ends_without_waiting(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    k = key()
    # A Retry-After holds the whole host it names: localhost is this target under a name of its own,
    # so the 30 s hold keeps no other test waiting.
    url = target.http.replace("127.0.0.1", "localhost")

    result = await run_one(make_runner, task(f"{url}/retry-after?key={k}&after=30&times=5", timeout=2))

    assert result.response is not None
    assert result.response.status_code == 429
    assert result.response.header("retry-after") == "30"
    assert result.attempts == 1
    assert target.hits(k) == 1
    assert result.elapsed < 2


async def test_deadline_cuts_backoff_short(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()
    one = task(f"{target.http}/status/503?key={k}", timeout=3.0, retries=10).model_copy(
        update={"policy": ClientPolicy(retry=RetryPolicy(retries=10, backoff_initial=2.0, backoff_max=8.0))}
    )

    result = await run_one(make_runner, one)

    assert result.error is not None
    assert result.error.code is ErrorCode.RETRIES_EXHAUSTED
    # The first wait (1-2 s) fits in 3 s with a second to spare for the attempts on a busy
    # machine; the second (2-4 s), after at least 1 s, never does.
    assert result.attempts == 2
    assert target.hits(k) == 2
    assert result.elapsed < 3.0


async def test_slow_target_times_out_at_the_deadline(make_runner: RunnerFactory, target: HttpTarget) -> None:
    result = await run_one(make_runner, task(f"{target.http}/sleep?s=5", timeout=0.5))

    assert result.error is not None
    assert result.error.code is ErrorCode.TIMEOUT
    assert result.error.message == "the task's deadline passed before a response arrived"


async def test_a_body_still_arriving_at_the_deadline_times_out(make_runner: RunnerFactory, target: HttpTarget) -> None:
    result = await run_one(make_runner, task(f"{target.http}/drip?s=5", timeout=0.5))

    assert result.error is not None
    assert result.error.code is ErrorCode.TIMEOUT


async def test_connection_refused_is_connect_error(make_runner: RunnerFactory) -> None:
    result = await run_one(make_runner, task(f"http://127.0.0.1:{free_port()}/", retries=2))

    assert result.error is not None
    assert result.error.code is ErrorCode.CONNECT_ERROR
    assert result.error.message == "could not connect to the target"
    assert result.attempts == 3


async def test_a_certificate_from_an_untrusted_ca_is_tls_error_and_not_retried(
    make_runner: RunnerFactory, target: HttpTarget, certs: Certs
) -> None:
    result = await run_one(make_runner, task(f"{target.untrusted}/ok"), tls=_tls(ca_bundle=certs.ca))

    assert result.error is not None
    assert result.error.code is ErrorCode.TLS_ERROR
    assert result.error.message == "the TLS handshake with the target failed"
    assert result.attempts == 1


async def test_https_with_the_right_ca_succeeds(make_runner: RunnerFactory, target: HttpTarget, certs: Certs) -> None:
    result = await run_one(make_runner, task(f"{target.https}/ok"), tls=_tls(ca_bundle=certs.ca))

    assert result.response is not None
    assert result.response.status_code == 200


async def test_insecure_mode_is_explicit(make_runner: RunnerFactory, target: HttpTarget) -> None:
    verified = await run_one(make_runner, task(f"{target.https}/ok"))
    insecure = await run_one(make_runner, task(f"{target.https}/ok"), tls=_tls(insecure=True))

    assert verified.error is not None and verified.error.code is ErrorCode.TLS_ERROR
    assert insecure.response is not None and insecure.response.status_code == 200


async def test_mtls_with_a_client_certificate_is_accepted(
    make_runner: RunnerFactory, target: HttpTarget, certs: Certs
) -> None:
    tls = _tls(ca_bundle=certs.ca, client_cert=certs.client_cert, client_key=certs.client_key)

    result = await run_one(make_runner, task(f"{target.mtls}/ok"), tls=tls)

    assert result.response is not None
    assert result.response.status_code == 200


async def test_mtls_without_a_client_certificate_is_refused(
    make_runner: RunnerFactory, target: HttpTarget, certs: Certs
) -> None:
    result = await run_one(make_runner, task(f"{target.mtls}/ok", retries=0), tls=_tls(ca_bundle=certs.ca))

    assert result.error is not None
    # Under TLS 1.3 the server rejects the missing certificate after the client's handshake has
    # finished, so the client sees either the TLS alert or the reset that follows it.
    assert result.error.code in {ErrorCode.TLS_ERROR, ErrorCode.CONNECT_ERROR}


async def test_set_security_applies_to_later_batches(
    make_runner: RunnerFactory, target: HttpTarget, certs: Certs, mode: str
) -> None:
    if mode == "remote":
        # In remote mode the workers hold TLS to the targets (their CA bundle and client
        # certificate files); a client can't hand them its files, so it is told so at once.
        async with make_runner() as runner:
            with pytest.raises(UsageError, match="in remote mode TLS to the targets is the workers' setting"):
                runner.set_security(ca_bundle=str(certs.ca))
        return
    async with make_runner() as runner:
        before = await (await runner.launch([task(f"{target.https}/ok")])).wait()
        runner.set_security(ca_bundle=str(certs.ca))
        after = await (await runner.launch([task(f"{target.https}/ok")])).wait()

    assert before[0].error is not None and before[0].error.code is ErrorCode.TLS_ERROR
    assert after[0].response is not None and after[0].response.status_code == 200


async def test_oversize_body_is_response_too_large(make_runner: RunnerFactory, target: HttpTarget) -> None:
    at_limit = await run_one(make_runner, task(f"{target.http}/bytes?n=1000"), max_response_bytes=1000)
    over = await run_one(make_runner, task(f"{target.http}/bytes?n=1001"), max_response_bytes=1000)
    huge = await run_one(make_runner, task(f"{target.http}/bytes?n=5000000"), max_response_bytes=1000)

    assert at_limit.response is not None and len(at_limit.response.body) == 1000
    for result in (over, huge):
        assert result.error is not None
        assert result.error.code is ErrorCode.RESPONSE_TOO_LARGE
        assert result.error.message == "the response body exceeded the size limit"


async def test_oversize_chunked_body_is_cut_while_it_is_read(make_runner: RunnerFactory, target: HttpTarget) -> None:
    # No Content-Length to refuse up front, and 10 GB on the way: only a cap applied while reading
    # ends this inside the timeout, and with response_too_large rather than timeout.
    at_limit = await run_one(make_runner, task(f"{target.http}/chunked?n=1000"), max_response_bytes=1000)
    endless = await run_one(
        make_runner, task(f"{target.http}/chunked?n=10000000000", timeout=30), max_response_bytes=1000
    )

    assert at_limit.response is not None and at_limit.response.body == b"x" * 1000
    assert endless.error is not None
    assert endless.error.code is ErrorCode.RESPONSE_TOO_LARGE


async def test_target_outside_the_allowlist_is_never_sent(make_runner: RunnerFactory, target: HttpTarget) -> None:
    k = key()

    result = await run_one(make_runner, task(f"{target.http}/status/200?key={k}"), allowed_targets=["10.0.0.0/8"])

    assert result.error is not None
    assert result.error.code is ErrorCode.TARGET_NOT_ALLOWED
    assert target.hits(k) == 0


async def test_keep_alive_off_sends_connection_close(make_runner: RunnerFactory, target: HttpTarget) -> None:
    one = task(f"{target.http}/echo")
    one.policy = one.policy.model_copy(
        update={"transport": one.policy.transport.model_copy(update={"keep_alive": False})}
    )

    result = await run_one(make_runner, one)

    assert result.response is not None
    headers = {k.lower(): v for k, v in json.loads(result.response.body)["headers"]}
    assert headers["connection"].lower() == "close"


def _tls(
    *,
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    insecure: bool = False,
) -> TlsConfig:
    def text(path: Path | None) -> str | None:
        return None if path is None else str(path)

    return TlsConfig(
        ca_bundle=text(ca_bundle), client_cert=text(client_cert), client_key=text(client_key), insecure=insecure
    )


async def test_a_result_carries_its_tasks_labels_back(make_runner: RunnerFactory, target: HttpTarget) -> None:
    labelled = task(f"{target.http}/cookies")
    labelled.labels = {"line": "7", "rack": "x1000c0", "note": "ünïcødé ✓"}
    refused = task(f"http://127.0.0.1:{free_port()}/", retries=0)
    refused.labels = {"line": "8"}
    plain = task(f"{target.http}/cookies")

    async with make_runner() as runner:
        batch = await runner.launch([labelled, refused, plain])
        results = {r.task_id: r for r in await batch.wait()}

    assert results[labelled.id].ok
    assert results[labelled.id].labels == {"line": "7", "rack": "x1000c0", "note": "ünïcødé ✓"}
    assert results[refused.id].error is not None
    assert results[refused.id].labels == {"line": "8"}
    assert results[plain.id].labels == {}
