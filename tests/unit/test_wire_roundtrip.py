"""Every valid envelope survives encode then decode unchanged."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.engine import DEFAULT_MAX_RESPONSE_BYTES
from shared.models import HttpResponse, ResultEnvelope, TaskEnvelope, TaskResult
from shared.settings import KAFKA_MAX_MESSAGE_BYTES
from shared.wire import (
    HEADER_BATCH_ID,
    HEADER_SCHEMA,
    HEADER_TASK_ID,
    decode_result,
    decode_task,
    encode_result,
    encode_result_of,
    encode_task,
    header_value,
)
from tests.strategies import result_envelopes, results, task_envelopes


@settings(max_examples=300)
@given(task_envelopes())
def test_task_envelope_round_trip(envelope: TaskEnvelope) -> None:
    value, headers = encode_task(envelope)

    decoded = decode_task(value, headers)

    assert decoded == envelope
    assert decoded.task.request.body == envelope.task.request.body
    assert decoded.task.request.headers == envelope.task.request.headers
    assert header_value(headers, HEADER_SCHEMA) == b"1"
    assert header_value(headers, HEADER_BATCH_ID) == envelope.batch_id.encode()
    assert header_value(headers, HEADER_TASK_ID) == str(envelope.task.id).encode()


@settings(max_examples=300)
@given(result_envelopes)
def test_result_envelope_round_trip(envelope: ResultEnvelope) -> None:
    value, headers = encode_result(envelope)

    decoded = decode_result(value, headers)

    assert decoded == envelope
    if envelope.result.response is not None:
        assert decoded.result.response is not None
        assert decoded.result.response.body == envelope.result.response.body
        assert decoded.result.response.headers == envelope.result.response.headers


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    results,
    st.floats(0, 1e6, allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=64),
    st.none() | _text,
)
def test_a_result_encoded_without_its_envelope_model_is_the_same_bytes(
    result: TaskResult, elapsed: float, batch_id: str, worker: str | None
) -> None:
    result = TaskResult(result.task_id, result.response, result.error, result.attempts, elapsed, result.labels)

    reference = encode_result(ResultEnvelope(batch_id=batch_id, result=result, worker=worker))
    assert encode_result_of(batch_id, result, worker) == reference
    assert encode_result_of(batch_id, result, worker, task_id=str(result.task_id).encode()) == reference


def test_binary_body_and_repeated_unicode_headers_survive() -> None:
    from datetime import UTC, datetime

    from shared.models import HttpRequest, Task

    request = HttpRequest(
        method="POST",
        url="https://10.0.0.1/redfish/v1",
        headers=[("X-Dup", "one"), ("X-Dup", "ünïcødé ✓"), ("set-cookie", "a=1")],
        body=bytes(range(256)),
    )
    envelope = TaskEnvelope(
        batch_id="b",
        reply_topic="trs-svc-http-v1-rcv-b",
        deadline=datetime.now(UTC),
        task=Task(service_name="svc", request=request),
    )

    decoded = decode_task(*encode_task(envelope))

    assert decoded.task.request.body == bytes(range(256))
    assert decoded.task.request.headers == [("X-Dup", "one"), ("X-Dup", "ünïcødé ✓"), ("set-cookie", "a=1")]


def test_a_result_at_the_default_body_limit_fits_a_default_kafka_message() -> None:
    headers = tuple((f"X-Header-{n}", "v" * 200) for n in range(40))
    response = HttpResponse(status_code=200, headers=headers, body=b"\xff" * DEFAULT_MAX_RESPONSE_BYTES)
    result = TaskResult(task_id=uuid.uuid4(), response=response, attempts=4, elapsed=29.9)

    value, _ = encode_result(ResultEnvelope(batch_id="6b07042e-6b07046a-1920d4874bd3", result=result, worker="w-1"))

    assert len(value) < KAFKA_MAX_MESSAGE_BYTES
