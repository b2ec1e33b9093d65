"""Kafka envelopes to and from value bytes plus headers, and the topic names TRS uses.

Topic names:

* request topic ``trs-<service>-http-v1-send``: tasks, consumed by the worker group;
* reply topic ``trs-<service>-http-v1-rcv-<batch>``: one per batch, read by its client;
* ``trs-control``: cancel orders, read by every worker outside the group, and release notices
  (reply topics about to be deleted), read by clients; the ``trs-kind`` header tells them apart;
* ``trs-dlq``: messages that could not be decoded or handled, with the reason in a header.

A dead-letter record keeps the original value, key and headers, within bounds: a value too big for
the worker's message limit is replaced by its size and SHA-256 digest, a key longer than
``DLQ_MAX_KEY_BYTES`` by its digest, and original headers past ``DLQ_MAX_HEADERS`` or the header
byte budget are left out and counted; each change is said in a ``trs-dlq-*`` header.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar

import pydantic_core
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.errors import ErrorCode, InvalidEnvelope
from shared.models import (
    SCHEMA_VERSION,
    CancelEnvelope,
    ReleaseNotice,
    ResultEnvelope,
    TaskEnvelope,
    TaskError,
    TaskResult,
    is_topic_name,
    normalize_service_name,
)

__all__ = [
    "CONTROL_KIND_CANCEL",
    "CONTROL_KIND_RELEASE",
    "CONTROL_TOPIC",
    "DLQ_TOPIC",
    "HEADER_BATCH_ID",
    "HEADER_CONTENT_TYPE",
    "HEADER_DLQ_HEADERS_DROPPED",
    "HEADER_DLQ_KEY_SIZE",
    "HEADER_DLQ_OFFSET",
    "HEADER_DLQ_PARTITION",
    "HEADER_DLQ_REASON",
    "HEADER_DLQ_TOPIC",
    "HEADER_DLQ_VALUE_SHA256",
    "HEADER_DLQ_VALUE_SIZE",
    "HEADER_KIND",
    "HEADER_SCHEMA",
    "HEADER_TASK_ID",
    "MAX_TASK_HEADERS",
    "REPLY_TOPIC_PREFIX_RE",
    "REQUEST_TOPIC_PATTERN",
    "ConsumedMessage",
    "DeadLetterRecord",
    "KafkaHeaders",
    "batch_of_reply_topic",
    "batch_times",
    "check_consumed_task",
    "control_kind",
    "dead_letter_headers",
    "dead_letter_record",
    "decode_cancel",
    "decode_consumed_task",
    "decode_release",
    "decode_result",
    "decode_task",
    "decode_task_value",
    "encode_cancel",
    "encode_release",
    "encode_result",
    "encode_result_of",
    "encode_task",
    "header_value",
    "message_headers",
    "new_batch_id",
    "reply_topic",
    "request_topic",
]

CONTROL_TOPIC = "trs-control"
DLQ_TOPIC = "trs-dlq"
#: The subscription pattern that matches every service's request topic.
REQUEST_TOPIC_PATTERN = r"^trs-.*-http-v1-send$"
#: Matches a reply topic and captures its service and batch id.
REPLY_TOPIC_PREFIX_RE = re.compile(r"^trs-(?P<service>[a-z0-9-]+)-http-v1-rcv-(?P<batch>[A-Za-z0-9_-]+)$")

_BATCH_ID_RE = re.compile(r"^(?P<created>[0-9a-f]{1,12})-(?P<expires>[0-9a-f]{1,12})-[0-9a-f]{12}$")

HEADER_SCHEMA = "trs-schema"
HEADER_CONTENT_TYPE = "content-type"
HEADER_BATCH_ID = "trs-batch-id"
HEADER_TASK_ID = "trs-task-id"
HEADER_DLQ_REASON = "trs-dlq-reason"
HEADER_DLQ_TOPIC = "trs-dlq-topic"
HEADER_DLQ_PARTITION = "trs-dlq-partition"
HEADER_DLQ_OFFSET = "trs-dlq-offset"
HEADER_DLQ_HEADERS_DROPPED = "trs-dlq-headers-dropped"
HEADER_DLQ_VALUE_SIZE = "trs-dlq-value-size"
HEADER_DLQ_VALUE_SHA256 = "trs-dlq-value-sha256"
HEADER_DLQ_KEY_SIZE = "trs-dlq-key-size"

#: Most headers a task message may carry; TRS's own client sets five at most.
MAX_TASK_HEADERS = 64
#: Most original headers a dead-letter record keeps, and most bytes they may take together.
DLQ_MAX_HEADERS = 64
DLQ_MAX_HEADER_BYTES = 16_384
#: Longest key a dead-letter record keeps as it is; a longer one becomes its SHA-256 digest.
DLQ_MAX_KEY_BYTES = 1024
#: Longest reason a dead-letter record carries, in characters.
DLQ_MAX_REASON_CHARS = 1000
#: The reason of a message whose headers the Kafka client can't read (a name that isn't UTF-8).
UNREADABLE_HEADERS = "headers: the Kafka client could not read them (a header name that is not UTF-8)"
#: What a record on ``trs-control`` is; a cancel order, the first kind, carries none.
HEADER_KIND = "trs-kind"
CONTROL_KIND_CANCEL = "cancel"
CONTROL_KIND_RELEASE = "release"

CONTENT_TYPE = b"application/json"
_SCHEMA_BYTES = str(SCHEMA_VERSION).encode()

KafkaHeaders = list[tuple[str, str | bytes | None]]
HeadersIn = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None
_Envelope = TypeVar("_Envelope", bound=BaseModel)


class ConsumedMessage(Protocol):
    """What ``message_headers`` needs of a consumed Kafka message (``confluent_kafka.Message`` has it)."""

    def headers(self) -> HeadersIn: ...


def request_topic(service_name: str) -> str:
    """The request topic for ``service_name`` (normalised; raises ``ValueError`` if unusable)."""
    return f"trs-{normalize_service_name(service_name)}-http-v1-send"


def reply_topic(service_name: str, batch_id: str) -> str:
    """The reply topic of one batch."""
    return f"trs-{normalize_service_name(service_name)}-http-v1-rcv-{batch_id}"


def new_batch_id(created: datetime, expires: datetime) -> str:
    """A batch id that carries when its batch was created and when its last deadline (plus grace) passes.

    ``trs topics gc`` reads both from the reply topic's name, so it can tell an orphan (its
    batch has expired) from a live batch without asking anyone.
    """
    return f"{int(created.timestamp()):x}-{int(expires.timestamp()):x}-{secrets.token_hex(6)}"


def batch_times(batch_id: str) -> tuple[datetime, datetime] | None:
    """``(created, expires)`` of a batch id made by ``new_batch_id``, or ``None`` for any other id."""
    match = _BATCH_ID_RE.match(batch_id)
    if match is None:
        return None
    created, expires = (datetime.fromtimestamp(int(match.group(g), 16), UTC) for g in ("created", "expires"))
    return created, expires


def batch_of_reply_topic(topic: str) -> str | None:
    """The batch id in reply topic ``topic``, or ``None`` if it isn't one."""
    match = REPLY_TOPIC_PREFIX_RE.match(topic)
    return None if match is None else match.group("batch")


def dead_letter_headers(
    reason: str, *, topic: str, partition: int, offset: int, original: HeadersIn = None, budget: int | None = None
) -> KafkaHeaders:
    """The headers of a dead-letter record: the original ones that fit, then the reason and the source.

    Original headers are kept in order while there are at most ``DLQ_MAX_HEADERS`` of them within
    ``budget`` bytes (``DLQ_MAX_HEADER_BYTES`` unless smaller); how many were left out goes in
    ``trs-dlq-headers-dropped``. The reason is cut at ``DLQ_MAX_REASON_CHARS``.
    """
    budget = DLQ_MAX_HEADER_BYTES if budget is None else min(budget, DLQ_MAX_HEADER_BYTES)
    headers: KafkaHeaders = []
    dropped = 0
    for key, value in _pairs(original):
        if key.startswith("trs-dlq-"):
            continue
        size = _header_size(key, value)
        if len(headers) < DLQ_MAX_HEADERS and size <= budget:
            headers.append((key, value))
            budget -= size
        else:
            dropped += 1
    if len(reason) > DLQ_MAX_REASON_CHARS:
        reason = reason[: DLQ_MAX_REASON_CHARS - 3] + "..."
    headers += [
        (HEADER_DLQ_REASON, reason.encode(errors="replace")),
        (HEADER_DLQ_TOPIC, topic.encode()),
        (HEADER_DLQ_PARTITION, str(partition).encode()),
        (HEADER_DLQ_OFFSET, str(offset).encode()),
    ]
    if dropped:
        headers.append((HEADER_DLQ_HEADERS_DROPPED, str(dropped).encode()))
    return headers


@dataclass(frozen=True)
class DeadLetterRecord:
    """What goes to ``trs-dlq`` for one message."""

    value: bytes
    key: bytes | None
    headers: KafkaHeaders


def dead_letter_record(
    reason: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    key: bytes | None,
    original: HeadersIn,
    max_message_bytes: int,
) -> DeadLetterRecord:
    """The dead-letter record of a message, kept within ``max_message_bytes``.

    Headers get a quarter of the limit at most. A key over ``DLQ_MAX_KEY_BYTES`` becomes the hex
    SHA-256 of itself, with its size in ``trs-dlq-key-size``. A value that doesn't fit in what is
    left becomes ``{"size": ..., "sha256": ...}``, with both also in ``trs-dlq-value-size`` and
    ``trs-dlq-value-sha256``: a broker would refuse the record whole, and it would be lost.
    """
    headers = dead_letter_headers(
        reason, topic=topic, partition=partition, offset=offset, original=original, budget=max_message_bytes // 4
    )
    if (key is not None) and len(key) > DLQ_MAX_KEY_BYTES:
        headers.append((HEADER_DLQ_KEY_SIZE, str(len(key)).encode()))
        key = hashlib.sha256(key).hexdigest().encode()
    value = value or b""
    room = max_message_bytes - len(key or b"") - sum(_header_size(k, v) for k, v in headers)
    if len(value) > room:
        digest = hashlib.sha256(value).hexdigest()
        headers += [(HEADER_DLQ_VALUE_SIZE, str(len(value)).encode()), (HEADER_DLQ_VALUE_SHA256, digest.encode())]
        value = json.dumps({"size": len(value), "sha256": digest}).encode()
    return DeadLetterRecord(value, key, headers)


def _pairs(headers: HeadersIn) -> KafkaHeaders:
    # No `type(headers) is list` shortcut past the ABC check: for a header name that isn't UTF-8,
    # confluent-kafka returns its list with the UnicodeDecodeError still set, and the check, Python
    # code, is what raises it here, inside message_headers; without it the error surfaced at the next
    # C call, outside any handler, and the record was never done (tests/reliability/test_hostile_input.py).
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())


def _as_bytes(value: str | bytes) -> bytes:
    # Never raises: a str that came from outside may hold lone surrogates.
    return value.encode(errors="surrogatepass") if isinstance(value, str) else value


def _header_size(key: str, value: str | bytes | None) -> int:
    return len(_as_bytes(key)) + (0 if value is None else len(_as_bytes(value)))


def message_headers(message: ConsumedMessage) -> KafkaHeaders | None:
    """A consumed message's headers (``[]`` when it has none), or ``None`` when they can't be read.

    Call it once per message, and pass on what it returns. confluent-kafka decodes header names as
    UTF-8 and raises ``SystemError`` for one that isn't, but keeps the half-built list: a second
    ``headers()`` returns it, and touching it crashes the process (SIGSEGV).
    """
    try:
        return _pairs(message.headers())
    except Exception:
        return None


def header_value(headers: HeadersIn, name: str) -> bytes | None:
    """The first value of Kafka header ``name``, or ``None``."""
    # Asked of every message, so the pairs are not copied.
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in pairs:
        if key == name:
            return None if value is None else _as_bytes(value)
    return None


def _base_headers(batch_id: str, task_id: str | None) -> KafkaHeaders:
    headers: KafkaHeaders = [
        (HEADER_SCHEMA, _SCHEMA_BYTES),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE),
        (HEADER_BATCH_ID, batch_id.encode()),
    ]
    if task_id is not None:
        headers.append((HEADER_TASK_ID, task_id.encode()))
    return headers


def _json(envelope: BaseModel) -> bytes:
    # Straight to bytes: model_dump_json() builds a str that .encode() then copies.
    return envelope.__pydantic_serializer__.to_json(envelope)


def encode_task(envelope: TaskEnvelope) -> tuple[bytes, KafkaHeaders]:
    """Value bytes and headers of a task message."""
    headers = _base_headers(envelope.batch_id, str(envelope.task.id))
    return _json(envelope), headers


def encode_result(envelope: ResultEnvelope) -> tuple[bytes, KafkaHeaders]:
    """Value bytes and headers of a result message."""
    headers = _base_headers(envelope.batch_id, str(envelope.result.task_id))
    return _json(envelope), headers


def encode_result_of(
    batch_id: str, result: TaskResult, worker: str | None, *, task_id: bytes | None = None
) -> tuple[bytes, KafkaHeaders]:
    """What ``encode_result`` makes of ``ResultEnvelope(batch_id=batch_id, result=result, worker=worker)``, byte
    for byte, without building the envelope. ``task_id`` is ``str(result.task_id).encode()``, for a caller that
    has it already (a worker keys the result's record by it too).

    A worker encodes one result per task. The envelope model validated the result again, and its
    serializer took longer than the result's own (12.8 µs per result in all against 6.7, measured): here the
    result is serialized alone and set between the envelope's other fields, which a batch's results
    share and are written once per batch and worker.
    """
    around = _envelope_around(batch_id, worker)
    value = around[0] + _RESULT_SERIALIZER.to_json(result) + around[1]
    if task_id is None:
        task_id = str(result.task_id).encode()
    return value, [*around[2], (HEADER_TASK_ID, task_id)]


_RESULT_SERIALIZER: Final = TypeAdapter(TaskResult).serializer


@functools.lru_cache(maxsize=256)
def _envelope_around(batch_id: str, worker: str | None) -> tuple[bytes, bytes, KafkaHeaders]:
    """The bytes of a result envelope before its result and after it, and its headers but the task id's."""
    # An envelope with a result of a known form, cut around that result's JSON: whatever pydantic writes
    # for the other fields (escapes included) comes out as it would.
    probe = TaskResult(uuid.UUID(int=0), error=TaskError.of(ErrorCode.INTERNAL))
    whole = _json(ResultEnvelope(batch_id=batch_id, result=probe, worker=worker))
    inner = _RESULT_SERIALIZER.to_json(probe)
    before, found, after = whole.partition(b'"result":' + inner)
    if not found:
        raise AssertionError("a result envelope's JSON does not hold its result's")
    return before + b'"result":', after, _base_headers(batch_id, None)


def encode_cancel(envelope: CancelEnvelope) -> tuple[bytes, KafkaHeaders]:
    """Value bytes and headers of a cancel order."""
    return envelope.model_dump_json().encode(), _base_headers(envelope.batch_id, None)


def encode_release(notice: ReleaseNotice) -> tuple[bytes, KafkaHeaders]:
    """Value bytes and headers of a release notice."""
    headers: KafkaHeaders = [
        (HEADER_SCHEMA, _SCHEMA_BYTES),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE),
        (HEADER_KIND, CONTROL_KIND_RELEASE.encode()),
    ]
    return notice.model_dump_json().encode(), headers


def control_kind(headers: HeadersIn) -> str:
    """What a record on ``trs-control`` is: ``CONTROL_KIND_CANCEL``, ``CONTROL_KIND_RELEASE`` or another."""
    kind = header_value(headers, HEADER_KIND)
    return CONTROL_KIND_CANCEL if kind is None else kind.decode(errors="replace")


def _check_schema_header(headers: HeadersIn) -> None:
    schema = header_value(headers, HEADER_SCHEMA)
    if schema is not None and schema != _SCHEMA_BYTES:
        shown = schema[:20].decode(errors="replace") + ("..." if len(schema) > 20 else "")
        raise InvalidEnvelope(f"trs-schema: unknown schema version {shown!r}")


def _salvage(value: bytes) -> tuple[str | None, str | None]:
    """The reply topic and task id of a message that failed validation, if they can be read."""
    try:
        # pydantic-core's parser limits nesting and raises ValueError past it; json.loads would
        # raise RecursionError on deep nesting, which nothing here expects.
        raw: Any = pydantic_core.from_json(value)
    except ValueError:
        return None, None
    if not isinstance(raw, dict):
        return None, None
    reply = raw.get("reply_topic")
    task = raw.get("task")
    task_id = task.get("id") if isinstance(task, dict) else None
    return (reply if is_topic_name(reply) else None), _as_uuid(task_id)


def _as_uuid(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        location = ".".join(str(p) for p in error["loc"]) or "value"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def _decode(model: type[_Envelope], value: bytes | None) -> _Envelope:
    if value is None:
        raise InvalidEnvelope("value: the message has no value")
    try:
        return model.model_validate_json(value)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidEnvelope("value: not valid JSON") from exc
        reason = _validation_reason(exc)
        if model is TaskEnvelope:
            reply, task_id = _salvage(value)
            raise InvalidEnvelope(reason, reply_topic=reply, task_id=task_id) from exc
        raise InvalidEnvelope(reason) from exc


def decode_task(value: bytes | None, headers: HeadersIn = None) -> TaskEnvelope:
    """A task envelope from a Kafka message; raises ``InvalidEnvelope`` with the reason, and nothing else."""
    try:
        _check_schema_header(headers)
    except InvalidEnvelope as exc:
        raise _salvaged(exc.reason, value) from None
    return _decode(TaskEnvelope, value)


def decode_consumed_task(
    value: bytes | None, headers: KafkaHeaders | None, *, max_message_bytes: int | None = None
) -> TaskEnvelope:
    """A task envelope from a consumed message's value and the headers ``message_headers`` read
    (``None``: unreadable); raises ``InvalidEnvelope`` with the reason, and nothing else.

    Besides what ``decode_task`` checks, the headers must be readable and at most
    ``MAX_TASK_HEADERS``, and the value and headers together at most ``max_message_bytes``.
    """
    check_consumed_task(value, headers, max_message_bytes=max_message_bytes)
    return _decode(TaskEnvelope, value)


def check_consumed_task(value: bytes | None, headers: KafkaHeaders | None, *, max_message_bytes: int | None) -> None:
    """Every check of ``decode_consumed_task`` but the value's validation; raises ``InvalidEnvelope``."""
    if headers is None:
        raise _salvaged(UNREADABLE_HEADERS, value)
    if len(headers) > MAX_TASK_HEADERS:
        raise _salvaged(f"headers: {len(headers)}, over the limit of {MAX_TASK_HEADERS}", value)
    if max_message_bytes is not None:
        size = len(value or b"")
        for key, header in headers:
            # A str counts in UTF-8 bytes; TRS's own headers are ASCII names and bytes values.
            size += len(key) if key.isascii() else len(_as_bytes(key))
            if header is not None:
                size += len(header) if isinstance(header, bytes) else len(_as_bytes(header))
        if size > max_message_bytes:
            raise _salvaged(f"message: {size} bytes, over the limit of {max_message_bytes}", value)
    try:
        _check_schema_header(headers)
    except InvalidEnvelope as exc:
        raise _salvaged(exc.reason, value) from None


def decode_task_value(value: bytes | None) -> TaskEnvelope:
    """A task envelope from a message's value alone; raises ``InvalidEnvelope`` with the reason."""
    return _decode(TaskEnvelope, value)


def _salvaged(reason: str, value: bytes | None) -> InvalidEnvelope:
    reply, task_id = _salvage(value) if value is not None else (None, None)
    return InvalidEnvelope(reason, reply_topic=reply, task_id=task_id)


def decode_result(value: bytes | None, headers: HeadersIn = None) -> ResultEnvelope:
    """A result envelope from a Kafka message; raises ``InvalidEnvelope`` with the reason."""
    _check_schema_header(headers)
    return _decode(ResultEnvelope, value)


def decode_cancel(value: bytes | None, headers: HeadersIn = None) -> CancelEnvelope:
    """A cancel order from a Kafka message; raises ``InvalidEnvelope`` with the reason."""
    _check_schema_header(headers)
    return _decode(CancelEnvelope, value)


def decode_release(value: bytes | None, headers: HeadersIn = None) -> ReleaseNotice:
    """A release notice from a Kafka message; raises ``InvalidEnvelope`` with the reason."""
    _check_schema_header(headers)
    return _decode(ReleaseNotice, value)
