"""Hostile records, crafted with an outside Kafka client, sent to a worker's request topic.

kafka-python writes what TRS's own client never would: 2 MB envelopes, nesting deep enough to
break a recursive parser, header names that are not UTF-8, URLs with credentials or odd schemes,
CRLF in headers and 10,000 headers. Every one must end in a dead letter (and an ``invalid_task``
result when its reply topic and task id can be read), the partition's committed offset must reach
its end, the worker must stay up, and no request may reach the target. One well-formed task, sent
after them on the same partition, shows that the worker still runs tasks and that the target counts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from confluent_kafka import Message, Producer

from producer.topics import TopicAdmin
from shared.errors import ErrorCode
from shared.models import ResultEnvelope
from shared.wire import (
    DLQ_TOPIC,
    HEADER_DLQ_HEADERS_DROPPED,
    HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION,
    HEADER_DLQ_REASON,
    HEADER_DLQ_TOPIC,
    HEADER_DLQ_VALUE_SHA256,
    HEADER_DLQ_VALUE_SIZE,
    HEADER_SCHEMA,
    UNREADABLE_HEADERS,
    decode_result,
    decode_task,
    encode_task,
    header_value,
)
from tests.http_target import HttpTarget
from tests.integration.conftest import SharedWorker
from tests.kafka_io import committed, new_test_batch, read
from tests.waiting import wait_until

if TYPE_CHECKING:
    # Imported by name, pytest would try to collect it as a test class.
    from tests.kafka_io import TestBatch

pytestmark = pytest.mark.integration

#: The password in every URL with credentials; it must never show up in a DLQ header or a log line.
SECRET = f"pw-{uuid.uuid4().hex}"
PARTITION = 0
DEPTH = 100_000


class RawName(str):
    """A header name that kafka-python writes as the given bytes, though they are not UTF-8.

    kafka-python encodes each header name with ``str.encode``; the protocol itself allows any bytes.
    """

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode(errors="replace"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


Headers = list[tuple[str, bytes]]


@dataclass
class Case:
    """One hostile record and what its rejection must look like."""

    name: str
    value: bytes
    headers: Headers
    #: The start of the reason in its dead letter.
    reason: str
    #: The id of the task it carries, if any.
    task_id: str | None = None
    #: Whether its client is told ``invalid_task``: its reply topic and task id can still be read.
    told: bool = False
    #: The target key its URL names, whose hit count must stay zero.
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    placed: tuple[int, int] | None = None


@dataclass
class Outcome:
    cases: list[Case]
    dead: dict[tuple[int, int], Message]
    results: dict[str, ResultEnvelope]
    good: ResultEnvelope
    good_key: str
    #: The partition's end: one past the offset of the last record sent.
    end: int

    def case(self, name: str) -> Case:
        return next(case for case in self.cases if case.name == name)

    def dead_letter(self, name: str) -> Message:
        placed = self.case(name).placed
        assert placed is not None
        return self.dead[placed]


NAMES = [
    "a 2 MB envelope",
    "2 MB of random bytes",
    "deep nesting",
    "deep nesting, trs-schema 1",
    "deep nesting, trs-schema 99",
    "a header name that is not UTF-8",
    "a trs-schema value that is not UTF-8",
    "an HTTP header value that is not UTF-8",
    "an HTTP header value with a lone surrogate",
    "a URL with credentials",
    "a file: URL",
    "a gopher: URL",
    "a javascript: URL",
    "CRLF in a header value",
    "CRLF in a header name",
    "CRLF in the URL",
    "10,000 HTTP headers",
    "10,000 Kafka headers",
    "a reply topic Kafka refuses",
]


def _task(batch: TestBatch, target: HttpTarget, key: str) -> tuple[str, dict[str, object], Headers]:
    """A well-formed task to the target under ``key``, as its id, its JSON and its headers."""
    envelope = batch.envelope(f"{target.http}/status/200?key={key}")
    value, headers = encode_task(envelope)
    return str(envelope.task.id), json.loads(value), [(k, v) for k, v in headers if isinstance(v, bytes)]


def _case(
    batch: TestBatch,
    target: HttpTarget,
    name: str,
    reason: str,
    *,
    request: Callable[[dict[str, object], str], None] | None = None,
    envelope: Callable[[dict[str, object]], None] | None = None,
    raw: Callable[[bytes], bytes] | None = None,
    headers: Callable[[Headers], Headers] | None = None,
    told: bool = True,
) -> Case:
    """A well-formed task spoiled by the given edits to its request, envelope, bytes or headers."""
    key = uuid.uuid4().hex
    task_id, data, kafka_headers = _task(batch, target, key)
    task = data["task"]
    assert isinstance(task, dict)
    if request is not None:
        request(task["request"], key)
    if envelope is not None:
        envelope(data)
    value = json.dumps(data).encode()
    if raw is not None:
        value = raw(value)
    if headers is not None:
        kafka_headers = headers(kafka_headers)
    return Case(name, value, kafka_headers, reason, task_id=task_id, told=told, key=key)


def _nested(batch: TestBatch, target: HttpTarget, name: str, schema: bytes | None, reason: str) -> Case:
    def deep(value: bytes) -> bytes:
        return value.replace(b'"body": ""', b'"body": ' + b"[" * DEPTH + b"]" * DEPTH, 1)

    def schema_header(headers: Headers) -> Headers:
        rest = [(k, v) for k, v in headers if k != HEADER_SCHEMA]
        return rest if schema is None else [(HEADER_SCHEMA, schema), *rest]

    return _case(batch, target, name, reason, raw=deep, headers=schema_header, told=False)


def _set(field_name: str, value: object) -> Callable[[dict[str, object], str], None]:
    def edit(request: dict[str, object], key: str) -> None:
        request[field_name] = value(key) if callable(value) else value

    return edit


def _cases(batch: TestBatch, target: HttpTarget) -> list[Case]:
    port = target.http.rsplit(":", 1)[1]
    invalid_json = "value: not valid JSON"
    scheme = "task.request.url: URL scheme must be http or https"
    return [
        _case(
            batch,
            target,
            "a 2 MB envelope",
            "message: ",
            request=_set("body", base64.b64encode(b"x" * 1_500_000).decode()),
        ),
        Case("2 MB of random bytes", os.urandom(2_000_000), [], "message: "),
        _nested(batch, target, "deep nesting", None, invalid_json),
        _nested(batch, target, "deep nesting, trs-schema 1", b"1", invalid_json),
        _nested(batch, target, "deep nesting, trs-schema 99", b"99", "trs-schema: unknown schema version '99'"),
        _case(
            batch,
            target,
            "a header name that is not UTF-8",
            UNREADABLE_HEADERS,
            headers=lambda h: [*h, (RawName(b"x-\xff\xfe-name"), b"1")],
        ),
        _case(
            batch,
            target,
            "a trs-schema value that is not UTF-8",
            "trs-schema: unknown schema version",
            headers=lambda h: [(HEADER_SCHEMA, b"\xff\xfe"), *[(k, v) for k, v in h if k != HEADER_SCHEMA]],
        ),
        _case(
            batch,
            target,
            "an HTTP header value that is not UTF-8",
            invalid_json,
            request=_set("headers", [["X-Bin", "PLACEHOLDER"]]),
            raw=lambda v: v.replace(b"PLACEHOLDER", b"\xff\xfe"),
            told=False,
        ),
        _case(
            batch,
            target,
            "an HTTP header value with a lone surrogate",
            invalid_json,
            request=_set("headers", [["X-Bin", "PLACEHOLDER"]]),
            raw=lambda v: v.replace(b"PLACEHOLDER", b"\\udcff"),
            told=False,
        ),
        _case(
            batch,
            target,
            "a URL with credentials",
            "task.request.url: URL must not carry user info",
            request=_set("url", lambda key: f"http://user:{SECRET}@127.0.0.1:{port}/status/200?key={key}"),
        ),
        _case(batch, target, "a file: URL", scheme, request=_set("url", "file:///etc/passwd")),
        _case(
            batch,
            target,
            "a gopher: URL",
            scheme,
            request=_set("url", lambda key: f"gopher://127.0.0.1:{port}/_GET%20/status/200?key={key}"),
        ),
        _case(
            batch,
            target,
            "a javascript: URL",
            scheme,
            request=_set("url", lambda key: f"javascript:fetch('{target.http}/status/200?key={key}')"),
        ),
        _case(
            batch,
            target,
            "CRLF in a header value",
            "task.request.headers.0: Value error, header 'X-Evil' has a CR, LF or NUL",
            request=_set("headers", [["X-Evil", "a\r\nX-Injected: 1"]]),
        ),
        _case(
            batch,
            target,
            "CRLF in a header name",
            "task.request.headers.0: Value error, header name",
            request=_set("headers", [["X-Evil\r\nX-Injected", "1"]]),
        ),
        _case(
            batch,
            target,
            "CRLF in the URL",
            "task.request.url: URL contains white space or a control character",
            request=_set("url", lambda key: f"{target.http}/status/200?key={key}\r\nX-Injected: 1"),
        ),
        _case(
            batch,
            target,
            "10,000 HTTP headers",
            "task.request.headers: List should have at most 100 items",
            request=_set("headers", [["X-N", "v"]] * 10_000),
        ),
        _case(
            batch,
            target,
            "10,000 Kafka headers",
            "headers: 10004, over the limit of 64",
            headers=lambda h: h + [("x-n", b"v")] * 10_000,
        ),
        _case(
            batch,
            target,
            "a reply topic Kafka refuses",
            "reply_topic: Value error, '.' is not a legal Kafka topic name",
            envelope=lambda data: data.update(reply_topic="."),
            told=False,
        ),
    ]


def _send(bootstrap: str, topic: str, records: list[tuple[bytes, Headers]]) -> list[tuple[int, int]]:
    """Produce each record to ``PARTITION`` with kafka-python; returns each one's ``(partition, offset)``."""
    with warnings.catch_warnings():
        # kafka-python 3.0 loads its protocol schemas with importlib.resources calls Python deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=bootstrap, max_request_size=8_000_000, compression_type="lz4", linger_ms=5
        )
        try:
            futures = [producer.send(topic, value=v, headers=h, partition=PARTITION) for v, h in records]
            metadata = [future.get(timeout=60) for future in futures]
        finally:
            producer.close(timeout=10)
    return [(m.partition, m.offset) for m in metadata]


def _all_results(bootstrap: str, reply_topic: str) -> list[ResultEnvelope]:
    """Every result on a one-partition reply topic so far.

    A marker record produced now is read last, so everything before it has been read. (Tansu's
    high watermark can't tell: after a batch of records it reports the batch's first offset + 1.)
    """
    marker = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(reply_topic, value=b"", key=marker)
    assert producer.flush(10) == 0
    messages = read(bootstrap, reply_topic, until=lambda m: any(x.key() == marker for x in m), timeout=30)
    return [decode_result(m.value(), m.headers()) for m in messages if m.key() != marker]


def _headers(message: Message) -> list[tuple[str, bytes | None]]:
    raw = message.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def _dead_letters(bootstrap: str, source_topic: str, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], Message]:
    """The dead letters of ``source_topic``'s records at ``wanted`` places, by ``(partition, offset)``."""
    found: dict[tuple[int, int], Message] = {}

    def done(messages: list[Message]) -> bool:
        for message in messages:
            headers = _headers(message)
            if header_value(headers, HEADER_DLQ_TOPIC) != source_topic.encode():
                continue
            place = (
                int(header_value(headers, HEADER_DLQ_PARTITION) or b"-1"),
                int(header_value(headers, HEADER_DLQ_OFFSET) or b"-1"),
            )
            found[place] = message
        return wanted <= set(found)

    read(bootstrap, DLQ_TOPIC, until=done, timeout=90, partitions=3)
    return {place: message for place, message in found.items() if place in wanted}


@pytest.fixture(scope="module")
def outcome(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> Iterator[Outcome]:
    """Every hostile case, then one good task, sent once to partition 0; what came of them."""
    topic = shared_worker.service.request_topic
    batch = new_test_batch(admin, shared_worker.service.name)
    cases = _cases(batch, target)
    assert [case.name for case in cases] == NAMES
    good_key = uuid.uuid4().hex
    good_id, good_json, good_headers = _task(batch, target, good_key)
    records = [(case.value, case.headers) for case in cases] + [(json.dumps(good_json).encode(), good_headers)]

    placed = _send(kafka_bootstrap, topic, records)
    for case, place in zip(cases, placed, strict=False):
        case.placed = place

    end = placed[-1][1] + 1
    # A record is done once everything produced for it is acknowledged, so past this point every
    # dead letter and every result the worker will ever produce for them is on the broker.
    wait_until(
        lambda: committed(kafka_bootstrap, shared_worker.group_id, topic, PARTITION + 1)[PARTITION] == end,
        90,
        f"the committed offset of {topic}[{PARTITION}] to reach {end}\n{shared_worker.worker.log()[-5000:]}",
    )
    dead = _dead_letters(kafka_bootstrap, topic, set(placed[:-1]))
    results = {str(r.result.task_id): r for r in _all_results(kafka_bootstrap, batch.reply_topic)}
    yield Outcome(cases, dead, results, results[good_id], good_key, end)


def test_the_well_formed_task_after_them_runs(outcome: Outcome, target: HttpTarget) -> None:
    assert outcome.good.result.response is not None
    assert outcome.good.result.response.status_code == 200
    assert target.hits(outcome.good_key) == 1


@pytest.mark.parametrize("name", NAMES)
def test_each_hostile_record_ends_in_a_dead_letter_with_its_reason(outcome: Outcome, name: str) -> None:
    dead = outcome.dead_letter(name)

    reason = (header_value(dead.headers(), HEADER_DLQ_REASON) or b"").decode()
    assert reason.startswith(outcome.case(name).reason), reason


@pytest.mark.parametrize("name", NAMES)
def test_a_client_is_told_invalid_task_when_the_task_can_still_be_read(outcome: Outcome, name: str) -> None:
    case = outcome.case(name)

    result = outcome.results.get(case.task_id or "")

    if not case.told:
        assert result is None
        return
    assert result is not None
    assert result.result.error is not None
    assert result.result.error.code is ErrorCode.INVALID_TASK


def test_nothing_reached_the_target(outcome: Outcome, target: HttpTarget) -> None:
    hits = {case.name: target.hits(case.key) for case in outcome.cases}

    assert hits == dict.fromkeys(hits, 0)


def test_the_partition_s_committed_offset_reaches_its_end(
    outcome: Outcome, kafka_bootstrap: str, shared_worker: SharedWorker
) -> None:
    topic = shared_worker.service.request_topic

    assert committed(kafka_bootstrap, shared_worker.group_id, topic, PARTITION + 1)[PARTITION] == outcome.end


@pytest.mark.parametrize("name", ["a 2 MB envelope", "2 MB of random bytes"])
def test_a_record_too_big_for_the_dlq_is_there_as_its_size_and_digest(outcome: Outcome, name: str) -> None:
    case = outcome.case(name)
    dead = outcome.dead_letter(name)
    headers = _headers(dead)

    digest = hashlib.sha256(case.value).hexdigest()

    assert json.loads(dead.value() or b"") == {"size": len(case.value), "sha256": digest}
    assert header_value(headers, HEADER_DLQ_VALUE_SIZE) == str(len(case.value)).encode()
    assert header_value(headers, HEADER_DLQ_VALUE_SHA256) == digest.encode()
    assert [(k, v) for k, v in headers if not k.startswith("trs-dlq-")] == case.headers


def test_the_2_mb_envelope_is_refused_for_its_size_alone(outcome: Outcome) -> None:
    case = outcome.case("a 2 MB envelope")

    assert str(decode_task(case.value, case.headers).task.id) == case.task_id


def test_ten_thousand_headers_are_capped_in_the_dead_letter(outcome: Outcome) -> None:
    case = outcome.case("10,000 Kafka headers")

    headers = _headers(outcome.dead_letter(case.name))

    assert [h for h in headers if not h[0].startswith("trs-dlq-")] == case.headers[:64]
    assert header_value(headers, HEADER_DLQ_HEADERS_DROPPED) == str(len(case.headers) - 64).encode()


def test_no_password_in_any_dead_letter_header_or_the_worker_log(outcome: Outcome, shared_worker: SharedWorker) -> None:
    headers = [h for message in outcome.dead.values() for h in _headers(message)]

    assert SECRET.encode() not in b"".join(v or b"" for _, v in headers)
    assert SECRET not in shared_worker.worker.log()


def test_the_worker_stays_up_with_no_internal_error(outcome: Outcome, shared_worker: SharedWorker) -> None:
    metrics = shared_worker.worker.metrics()

    assert shared_worker.worker.process.poll() is None
    assert shared_worker.worker.get("/healthz") == (200, "ok\n")
    assert metrics["trs_worker_internal_errors_total"] == 0
    assert metrics["trs_worker_dlq_records_total"] == len(outcome.cases)
    assert "Traceback" not in shared_worker.worker.log()
