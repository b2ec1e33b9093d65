"""Decoding never raises anything but ``InvalidEnvelope``, and a dead letter always fits the message limit."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import InvalidEnvelope
from shared.models import HttpRequest, Task, TaskEnvelope
from shared.wire import (
    DLQ_MAX_HEADERS,
    DLQ_MAX_KEY_BYTES,
    DLQ_MAX_REASON_CHARS,
    HEADER_DLQ_HEADERS_DROPPED,
    HEADER_DLQ_KEY_SIZE,
    HEADER_DLQ_REASON,
    HEADER_DLQ_VALUE_SHA256,
    HEADER_DLQ_VALUE_SIZE,
    HEADER_SCHEMA,
    MAX_TASK_HEADERS,
    UNREADABLE_HEADERS,
    DeadLetterRecord,
    HeadersIn,
    dead_letter_record,
    decode_consumed_task,
    decode_task,
    encode_task,
    header_value,
    message_headers,
)

REPLY_TOPIC = "trs-svc-http-v1-rcv-b1"
LIMIT = 1_000_000


class Message:
    """A consumed message; ``headers()`` raises as confluent-kafka does for a header name that isn't UTF-8."""

    def __init__(self, value: bytes | None, headers: HeadersIn = None, *, unreadable: bool = False) -> None:
        self._value = value
        self._headers = headers
        self._unreadable = unreadable

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> HeadersIn:
        if self._unreadable:
            raise SystemError("<method 'headers' of 'cimpl.Message' objects> returned a result with an exception set")
        return self._headers


def _envelope(**request: object) -> TaskEnvelope:
    return TaskEnvelope(
        batch_id="b1",
        reply_topic=REPLY_TOPIC,
        deadline=datetime.now(UTC),
        task=Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/", **request)),
    )


def _deep(depth: int) -> bytes:
    # Deep enough that json.loads raises RecursionError; the task id and reply topic are readable.
    nested = "[" * depth + "]" * depth
    return f'{{"reply_topic": "{REPLY_TOPIC}", "task": {{"id": "{_envelope().task.id}", "x": {nested}}}}}'.encode()


def _json_like() -> st.SearchStrategy[object]:
    keys = st.sampled_from(["schema_version", "batch_id", "reply_topic", "deadline", "task", "request", "url", "id"])
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys | st.text(max_size=8), children),
        max_leaves=20,
    )


_values = st.one_of(
    st.none(),
    st.binary(max_size=300),
    _json_like().map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(_deep),
    st.integers(1, 3000).map(lambda n: b"[" * n),
)
_header_values = st.one_of(st.none(), st.binary(max_size=30), st.text(max_size=30))
_header_names = st.one_of(st.just(HEADER_SCHEMA), st.text(max_size=20))
_headers = st.one_of(
    st.none(),
    st.lists(st.tuples(_header_names, _header_values), max_size=8),
    st.dictionaries(_header_names, _header_values, max_size=8),
)


@settings(max_examples=500, deadline=None)
@given(value=_values, headers=_headers)
def test_decode_task_raises_nothing_but_invalid_envelope(value: bytes | None, headers: HeadersIn) -> None:
    try:
        decode_task(value, headers)
    except InvalidEnvelope as exc:
        assert exc.reason
        assert len(exc.reason) < 2000


@settings(max_examples=200, deadline=None)
@given(value=_values, headers=_headers, unreadable=st.booleans(), limit=st.none() | st.integers(0, 5000))
def test_decode_consumed_task_raises_nothing_but_invalid_envelope(
    value: bytes | None, headers: HeadersIn, unreadable: bool, limit: int | None
) -> None:
    try:
        read = message_headers(Message(value, headers, unreadable=unreadable))
        decode_consumed_task(value, read, max_message_bytes=limit)
    except InvalidEnvelope as exc:
        assert exc.reason


@pytest.mark.parametrize("schema", [None, b"1", b"99"])
def test_deep_nesting_is_invalid_whatever_the_schema_header(schema: bytes | None) -> None:
    headers = None if schema is None else [(HEADER_SCHEMA, schema)]

    with pytest.raises(InvalidEnvelope) as info:
        decode_task(_deep(100_000), headers)

    expected = "value: not valid JSON" if schema != b"99" else "trs-schema: unknown schema version '99'"
    assert info.value.reason == expected


def test_a_huge_unknown_schema_header_is_cut_short_in_the_reason() -> None:
    with pytest.raises(InvalidEnvelope, match=r"^trs-schema: unknown schema version '9{20}\.\.\.'$"):
        decode_task(b"{}", [(HEADER_SCHEMA, b"9" * 100_000)])


def test_headers_the_kafka_client_can_not_read_are_none() -> None:
    assert message_headers(Message(b"{}", unreadable=True)) is None
    assert message_headers(Message(b"{}", None)) == []
    assert message_headers(Message(b"{}", {"a": b"1"})) == [("a", b"1")]


def test_unreadable_headers_make_the_message_invalid_and_its_client_is_still_told() -> None:
    envelope = _envelope()
    value, _ = encode_task(envelope)

    with pytest.raises(InvalidEnvelope) as info:
        decode_consumed_task(value, message_headers(Message(value, unreadable=True)))

    assert info.value.reason == UNREADABLE_HEADERS
    assert info.value.reason == "headers: the Kafka client could not read them (a header name that is not UTF-8)"
    assert info.value.reply_topic == REPLY_TOPIC
    assert info.value.task_id == str(envelope.task.id)


def test_a_message_over_the_limit_is_invalid_and_its_client_is_still_told() -> None:
    envelope = _envelope(body=b"x" * 2_000_000)
    value, headers = encode_task(envelope)
    size = len(value) + sum(len(k) + len(v or b"") for k, v in headers)

    with pytest.raises(InvalidEnvelope) as info:
        decode_consumed_task(value, headers, max_message_bytes=LIMIT)

    assert info.value.reason == f"message: {size} bytes, over the limit of {LIMIT}"
    assert info.value.reply_topic == REPLY_TOPIC
    assert info.value.task_id == str(envelope.task.id)
    assert decode_consumed_task(value, headers).task.id == envelope.task.id


def test_huge_headers_count_towards_the_limit() -> None:
    value, headers = encode_task(_envelope())

    with pytest.raises(InvalidEnvelope, match=r"^message: \d+ bytes, over the limit of 1000000$"):
        decode_consumed_task(value, [*headers, ("x-huge", b"h" * LIMIT)], max_message_bytes=LIMIT)


def test_more_headers_than_the_cap_make_the_message_invalid() -> None:
    envelope = _envelope()
    value, headers = encode_task(envelope)
    many = headers + [("x-n", b"v")] * 10_000

    with pytest.raises(InvalidEnvelope) as info:
        decode_consumed_task(value, many)

    assert info.value.reason == f"headers: {len(many)}, over the limit of {MAX_TASK_HEADERS}"
    assert info.value.task_id == str(envelope.task.id)
    decode_consumed_task(value, headers + [("x-n", b"v")] * (MAX_TASK_HEADERS - len(headers)))


def _size(value: bytes, key: bytes | None, headers: list[tuple[str, str | bytes | None]]) -> int:
    def raw(part: str | bytes | None) -> int:
        return 0 if part is None else len(part.encode() if isinstance(part, str) else part)

    return len(value) + raw(key) + sum(raw(k) + raw(v) for k, v in headers)


def _dead(
    value: bytes | None, key: bytes | None, original: HeadersIn, reason: str = "value: not valid JSON"
) -> DeadLetterRecord:
    return dead_letter_record(
        reason,
        topic="trs-svc-http-v1-send",
        partition=2,
        offset=74,
        value=value,
        key=key,
        original=original,
        max_message_bytes=LIMIT,
    )


def test_a_value_too_big_for_the_dlq_becomes_its_size_and_digest_and_the_headers_stay() -> None:
    value = b"\xff" * 2_000_000
    original = [(HEADER_SCHEMA, b"99"), ("traceparent", b"00-abc-def-01")]

    dead = _dead(value, b"task-key", original)

    digest = hashlib.sha256(value).hexdigest()
    assert json.loads(dead.value) == {"size": 2_000_000, "sha256": digest}
    assert header_value(dead.headers, HEADER_DLQ_VALUE_SIZE) == b"2000000"
    assert header_value(dead.headers, HEADER_DLQ_VALUE_SHA256) == digest.encode()
    assert dead.headers[:2] == original
    assert header_value(dead.headers, HEADER_DLQ_REASON) == b"value: not valid JSON"
    assert dead.key == b"task-key"


def test_a_value_that_fits_is_kept_as_it_is() -> None:
    dead = _dead(b"x" * 900_000, None, [(HEADER_SCHEMA, b"1")])

    assert dead.value == b"x" * 900_000
    assert header_value(dead.headers, HEADER_DLQ_VALUE_SIZE) is None


def test_ten_thousand_headers_are_capped_and_the_drop_is_counted() -> None:
    original = [(f"h{n}", b"v" * 10) for n in range(10_000)]

    dead = _dead(b"{}", None, original)

    kept = [h for h in dead.headers if not h[0].startswith("trs-dlq-")]
    assert kept == original[:DLQ_MAX_HEADERS]
    assert header_value(dead.headers, HEADER_DLQ_HEADERS_DROPPED) == str(10_000 - DLQ_MAX_HEADERS).encode()


def test_a_huge_header_is_left_out_and_the_rest_are_kept() -> None:
    original = [("small", b"1"), ("huge", b"v" * 500_000), ("after", b"2")]

    dead = _dead(b"{}", None, original)

    assert [h for h in dead.headers if not h[0].startswith("trs-dlq-")] == [("small", b"1"), ("after", b"2")]
    assert header_value(dead.headers, HEADER_DLQ_HEADERS_DROPPED) == b"1"


def test_a_long_key_becomes_its_digest_and_a_long_reason_is_cut() -> None:
    key = b"k" * (DLQ_MAX_KEY_BYTES + 1)

    dead = _dead(b"{}", key, None, reason="r" * 5000)

    assert dead.key == hashlib.sha256(key).hexdigest().encode()
    assert header_value(dead.headers, HEADER_DLQ_KEY_SIZE) == str(len(key)).encode()
    reason = header_value(dead.headers, HEADER_DLQ_REASON) or b""
    assert len(reason) == DLQ_MAX_REASON_CHARS
    assert reason.endswith(b"...")


@settings(max_examples=200, deadline=None)
@given(
    value=st.none() | st.integers(0, 3_000_000).map(lambda n: b"v" * n),
    key=st.none() | st.integers(0, 3_000_000).map(lambda n: b"k" * n),
    original=st.lists(
        st.tuples(st.text(max_size=50), st.none() | st.integers(0, 400_000).map(lambda n: b"h" * n)), max_size=200
    ),
    limit=st.integers(10_000, 2_000_000),
    reason=st.text(max_size=3000),
)
def test_a_dead_letter_always_fits_the_message_limit(
    value: bytes | None, key: bytes | None, original: list[tuple[str, bytes | None]], limit: int, reason: str
) -> None:
    dead = dead_letter_record(
        reason, topic="t", partition=0, offset=0, value=value, key=key, original=original, max_message_bytes=limit
    )

    assert _size(dead.value, dead.key, dead.headers) <= limit


@pytest.mark.parametrize("reply_topic", [".", "..", "a" * 250, "has space", "", 7])
def test_a_bad_messages_reply_topic_is_salvaged_only_when_the_envelope_would_accept_it(reply_topic: object) -> None:
    raw = json.loads(encode_task(_envelope())[0])
    raw["reply_topic"] = reply_topic

    with pytest.raises(InvalidEnvelope) as info:
        decode_task(json.dumps(raw).encode(), [(HEADER_SCHEMA, b"1")])

    assert info.value.reason.startswith("reply_topic: ")
    assert info.value.reply_topic is None
    assert info.value.task_id == raw["task"]["id"]
