"""Results: frozen, slotted, one outcome each, bodies as standard base64, and the task's labels carried back."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.engine import Engine, MockTransport
from shared.errors import ErrorCode
from shared.models import (
    EMPTY_LABELS,
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_LABELS,
    HttpRequest,
    HttpResponse,
    ResultEnvelope,
    Task,
    TaskEnvelope,
    TaskError,
    TaskResult,
    error_result,
)
from shared.wire import decode_result, decode_task, encode_result, encode_task

#: Bytes whose standard base64 holds both '+' and '/', the two characters base64url replaces.
BODY = b"\xfb\xef\xff" * 3 + bytes(range(256))


def _task(**fields: object) -> Task:
    return Task.model_validate({"service_name": "svc", "request": {"url": "http://127.0.0.1/"}, **fields})


def _response_result(body: bytes = BODY) -> TaskResult:
    response = HttpResponse(200, (("Content-Type", "application/octet-stream"),), body)
    return TaskResult(uuid.uuid4(), response, None, 1, 0.25, _task(labels={"line": "3"}).labels)


def test_a_result_body_is_standard_base64_that_strict_decoding_accepts() -> None:
    result = _response_result()

    written = json.loads(result.to_json())["response"]["body"]

    assert "+" in written and "/" in written
    assert base64.b64decode(written, validate=True) == BODY
    assert TaskResult.from_json(result.to_json()) == result


def test_a_result_body_round_trips_on_the_wire_as_standard_base64() -> None:
    result = _response_result()

    value, headers = encode_result(ResultEnvelope(batch_id="b-1", result=result, worker="w"))
    decoded = decode_result(value, headers)

    assert base64.b64decode(json.loads(value)["result"]["response"]["body"], validate=True) == BODY
    assert decoded.result == result
    assert decoded.result.response is not None and decoded.result.response.body == BODY
    assert decoded.result.labels == {"line": "3"}


def test_a_request_body_is_standard_base64_on_the_wire() -> None:
    task = _task(request={"url": "http://127.0.0.1/", "method": "POST", "body": BODY})
    envelope = TaskEnvelope(
        batch_id="b-1", reply_topic="t", deadline=datetime.now(UTC) + timedelta(seconds=9), task=task
    )

    value, headers = encode_task(envelope)

    written = json.loads(value)["task"]["request"]["body"]
    assert base64.b64decode(written, validate=True) == BODY
    assert decode_task(value, headers).task.request.body == BODY


def test_base64url_bodies_written_by_older_versions_are_still_read() -> None:
    result = _response_result()
    raw = json.loads(result.to_json())
    raw["response"]["body"] = base64.urlsafe_b64encode(BODY).decode()

    assert TaskResult.from_json(json.dumps(raw)) == result


def test_a_result_has_exactly_one_outcome_when_read_too() -> None:
    with pytest.raises(ValueError, match="a result has exactly one of response or error"):
        TaskResult(uuid.uuid4())
    with pytest.raises(ValidationError, match="a result has exactly one of response or error"):
        TaskResult.from_json(json.dumps({"task_id": str(uuid.uuid4())}))


def test_reading_a_bad_result_does_not_echo_its_headers() -> None:
    raw = json.loads(_response_result().to_json())
    raw["response"]["headers"] = [["Set-Cookie", "id=very-secret"]]
    raw["response"]["status_code"] = 42

    with pytest.raises(ValidationError) as caught:
        TaskResult.from_json(json.dumps(raw))

    assert "greater than or equal to 100" in str(caught.value)
    assert "very-secret" not in str(caught.value)


def test_results_are_frozen_and_slotted() -> None:
    result = _response_result()

    with pytest.raises(dataclasses.FrozenInstanceError):
        result.attempts = 2  # type: ignore[misc]
    assert result.response is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.response.status_code = 500  # type: ignore[misc]
    for value in (result, result.response, TaskError.of(ErrorCode.TIMEOUT)):
        assert not hasattr(value, "__dict__")


def test_ok_outcome_and_header_lookups() -> None:
    result = _response_result()
    failed = error_result(_task(), ErrorCode.RETRIES_EXHAUSTED, attempts=4, status_code=503)

    assert result.ok and result.outcome == "response"
    assert result.response is not None and result.response.header("content-type") == "application/octet-stream"
    assert result.response.header("missing") is None
    assert HttpRequest(url="http://h/", headers=[("X-A", "1")]).header("x-a") == "1"
    assert not failed.ok and failed.outcome == "retries_exhausted"
    assert failed.error == TaskError(ErrorCode.RETRIES_EXHAUSTED, failed.error.message if failed.error else "", 503)
    assert TaskError.of(ErrorCode.TIMEOUT) is TaskError.of(ErrorCode.TIMEOUT)


def test_a_task_without_labels_shares_the_one_empty_mapping() -> None:
    first, second = _task(), _task(labels={})

    assert first.labels is EMPTY_LABELS and second.labels is EMPTY_LABELS
    assert error_result(first, ErrorCode.TIMEOUT).labels is EMPTY_LABELS
    assert TaskResult.from_json(error_result(first, ErrorCode.TIMEOUT).to_json()).labels is EMPTY_LABELS


def test_labels_are_read_only_and_replaced_whole() -> None:
    task = _task(labels={"line": "1"})

    with pytest.raises(
        TypeError, match=r"labels are read-only: assign a new mapping instead, as in task.labels = \{...\}"
    ):
        task.labels["line"] = "2"  # type: ignore[index]
    task.labels = {"line": "2"}

    assert task.labels == {"line": "2"}
    assert task.model_copy(deep=True).labels == {"line": "2"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({f"k{n}": "v" for n in range(MAX_LABELS + 1)}, f"{MAX_LABELS + 1} labels, over the limit of {MAX_LABELS}"),
        ({"": "v"}, f"label key '' must be 1 to {MAX_LABEL_KEY_LENGTH} characters long"),
        ({"k" * 200: "v"}, f"label key '{'k' * 40}'... must be 1 to {MAX_LABEL_KEY_LENGTH} characters long"),
        ({"k": "v" * (MAX_LABEL_VALUE_LENGTH + 1)}, f"label 'k' has a value over {MAX_LABEL_VALUE_LENGTH} characters"),
        ({"k": "\ud800"}, "label 'k' holds a lone surrogate"),
        ({"k": 3}, "labels.k\n  Input should be a valid string"),
    ],
)
def test_labels_out_of_bounds_are_refused_with_the_reason(labels: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _task(labels=labels)

    assert message in str(caught.value)


def test_labels_at_their_bounds_are_accepted() -> None:
    labels = {f"{n:0{MAX_LABEL_KEY_LENGTH}d}": "v" * MAX_LABEL_VALUE_LENGTH for n in range(MAX_LABELS)}

    assert _task(labels=labels).labels == labels


async def test_the_engine_hands_a_tasks_labels_to_its_result() -> None:
    async def answer(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, (("Server", "mock"),), b"ok")

    engine = Engine(transport=lambda policy, tls: MockTransport(answer))
    task = _task(labels={"line": "9"})
    expired = _task(labels={"line": "10"})
    try:
        done = await engine.run(task)
        late = await engine.run(expired, deadline=0.0)
    finally:
        await engine.aclose()

    assert done.labels is task.labels
    assert done.response == HttpResponse(200, (("Server", "mock"),), b"ok")
    assert late.error is not None and late.error.code is ErrorCode.EXPIRED
    assert late.labels == {"line": "10"}
