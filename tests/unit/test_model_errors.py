"""Bad input gets a clear error that names the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.errors import InvalidEnvelope
from shared.models import (
    _PLAIN_HTTP_URL_RE,
    HttpRequest,
    RetryPolicy,
    Task,
    TaskEnvelope,
    TaskError,
    TaskResult,
    url_problem,
)
from shared.wire import decode_task, encode_task, reply_topic, request_topic


def _error_fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in exc.errors()}


@pytest.mark.parametrize("url", ["ftp://host/file", "file:///etc/passwd", "host/no-scheme", "ws://h/"])
def test_url_scheme_other_than_http_is_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url=url)

    assert _error_fields(info.value) == {"url"}
    assert "URL scheme must be http or https" in str(info.value)


def test_url_without_host_is_rejected() -> None:
    with pytest.raises(ValidationError, match="URL has no host"):
        HttpRequest(url="http:///path")


@pytest.mark.parametrize("timeout", [0, -1, -0.5])
def test_zero_or_negative_timeout_is_rejected(timeout: float) -> None:
    with pytest.raises(ValidationError) as info:
        Task(service_name="svc", request=HttpRequest(url="http://h/"), timeout=timeout)

    assert _error_fields(info.value) == {"timeout"}
    assert "greater than 0" in str(info.value)


@pytest.mark.parametrize("retries", [-1, 101])
def test_retry_count_out_of_range_is_rejected(retries: int) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy(retries=retries)

    assert _error_fields(info.value) == {"retries"}


def test_backoff_max_below_initial_is_rejected() -> None:
    with pytest.raises(ValidationError, match="backoff_max must be at least backoff_initial"):
        RetryPolicy(backoff_initial=2.0, backoff_max=1.0)


@pytest.mark.parametrize("name", ["", "   ", "bad name", "svc!", "-leading", "trailing-", "a" * 101, "ünï"])
def test_service_name_that_cannot_form_a_topic_is_rejected(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        Task(service_name=name, request=HttpRequest(url="http://h/"))
    assert _error_fields(info.value) == {"service_name"}
    with pytest.raises(ValueError, match="service name"):
        request_topic(name)


def test_service_name_is_normalised_into_topic_names() -> None:
    task = Task(service_name="  HMS_Smd ", request=HttpRequest(url="http://h/"))

    assert task.service_name == "hms-smd"
    assert request_topic("HMS_Smd") == "trs-hms-smd-http-v1-send"
    assert reply_topic("hms-smd", "b1") == "trs-hms-smd-http-v1-rcv-b1"


@pytest.mark.parametrize("value", [b"not json", b"{", b"\xff\xfe", b""])
def test_envelope_bytes_that_are_not_json_are_rejected(value: bytes) -> None:
    with pytest.raises(InvalidEnvelope, match=r"^value: not valid JSON$"):
        decode_task(value)


def test_missing_value_is_rejected() -> None:
    with pytest.raises(InvalidEnvelope, match="value: the message has no value"):
        decode_task(None)


def _valid_envelope_json() -> dict[str, object]:
    envelope = TaskEnvelope(
        batch_id="b1",
        reply_topic="trs-svc-http-v1-rcv-b1",
        deadline=datetime.now(UTC),
        task=Task(service_name="svc", request=HttpRequest(url="http://h/")),
    )
    raw: dict[str, object] = json.loads(encode_task(envelope)[0])
    return raw


def test_unknown_schema_version_in_value_is_rejected_and_names_the_field() -> None:
    raw = _valid_envelope_json()
    raw["schema_version"] = 2

    with pytest.raises(InvalidEnvelope, match=r"schema_version: Input should be 1") as info:
        decode_task(json.dumps(raw).encode())

    # The reply topic and task id can still be read, so the client can be told.
    assert info.value.reply_topic == "trs-svc-http-v1-rcv-b1"
    assert info.value.task_id == raw["task"]["id"]  # type: ignore[index]


def test_unknown_schema_version_in_header_is_rejected() -> None:
    raw = _valid_envelope_json()

    with pytest.raises(InvalidEnvelope, match=r"trs-schema: unknown schema version '7'") as info:
        decode_task(json.dumps(raw).encode(), [("trs-schema", b"7")])
    assert info.value.reply_topic == "trs-svc-http-v1-rcv-b1"


def test_validation_failure_names_the_nested_field() -> None:
    raw = _valid_envelope_json()
    raw["task"]["request"]["url"] = "gopher://h/"  # type: ignore[index]

    with pytest.raises(InvalidEnvelope, match=r"task\.request\.url: URL scheme must be http or https"):
        decode_task(json.dumps(raw).encode())


def test_a_result_has_exactly_one_outcome() -> None:
    import uuid

    from shared.errors import ErrorCode
    from shared.models import HttpResponse

    with pytest.raises(ValueError, match="exactly one of response or error"):
        TaskResult(task_id=uuid.uuid4())
    with pytest.raises(ValueError, match="exactly one of response or error"):
        TaskResult(
            task_id=uuid.uuid4(),
            response=HttpResponse(status_code=200),
            error=TaskError.of(ErrorCode.TIMEOUT),
        )


def test_header_with_newline_is_rejected() -> None:
    with pytest.raises(ValidationError, match="CR, LF or NUL"):
        HttpRequest(url="http://h/", headers=[("X-Evil", "a\r\nInjected: 1")])


@given(
    st.one_of(st.text(), st.text().map(lambda rest: f"http://{rest}"), st.text().map(lambda rest: f"HTTPS://{rest}"))
)
def test_the_fast_url_check_accepts_only_urls_the_full_check_accepts(url: str) -> None:
    if _PLAIN_HTTP_URL_RE.match(url):
        assert url_problem(url) is None
