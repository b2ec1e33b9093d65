"""``TaskDecoder`` decodes what ``decode_consumed_task`` decodes and refuses what it refuses, template or not."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shared.task_decoder
import shared.wire
from shared.errors import InvalidEnvelope
from shared.models import EMPTY_LABELS, HttpRequest, Labels, Task, TaskEnvelope
from shared.task_decoder import TaskDecoder
from shared.wire import HEADER_SCHEMA, MAX_TASK_HEADERS, KafkaHeaders, decode_consumed_task, encode_task
from tests.strategies import task_envelopes

LIMIT = 1_000_000
REPLY_TOPIC = "trs-svc-http-v1-rcv-b1"

Outcome = tuple[object, ...]


def _outcome(decode: Callable[[], TaskEnvelope]) -> Outcome:
    """What a decode ends in, in a form two decodes can be compared by: the envelope, or the refusal."""
    try:
        envelope = decode()
    except InvalidEnvelope as exc:
        return ("refused", exc.reason, exc.reply_topic, exc.task_id)
    return ("decoded", envelope, envelope.task.id)


def _both(decoder: TaskDecoder, value: bytes | None, headers: KafkaHeaders | None) -> tuple[Outcome, Outcome]:
    fast = _outcome(lambda: decoder.decode(value, headers))
    full = _outcome(lambda: decode_consumed_task(value, headers, max_message_bytes=LIMIT))
    return fast, full


def _envelope(task_id: uuid.UUID | None = None, labels: dict[str, str] | None = None) -> TaskEnvelope:
    task = Task(
        id=task_id or uuid.uuid4(),
        service_name="svc",
        request=HttpRequest(url="http://127.0.0.1:8080/"),
        labels=labels or {},
    )
    return TaskEnvelope(batch_id="b1", reply_topic=REPLY_TOPIC, deadline=datetime(2030, 1, 1, tzinfo=UTC), task=task)


def _copy(value: bytes, task_id: uuid.UUID, *, upper: bool = False) -> bytes:
    """``value``, a task message whose id is spelt once in it, with another id in its place."""
    envelope = decode_consumed_task(value, [], max_message_bytes=LIMIT)
    text = str(task_id).upper() if upper else str(task_id)
    return value.replace(str(envelope.task.id).encode(), text.encode())


@pytest.fixture
def full_decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes | None]:
    """The values the decoder validates in full, in order."""
    seen: list[bytes | None] = []
    validate = shared.wire.decode_task_value

    def counted(value: bytes | None) -> TaskEnvelope:
        seen.append(value)
        return validate(value)

    monkeypatch.setattr(shared.task_decoder, "decode_task_value", counted)
    return seen


def test_copies_of_one_task_are_validated_twice_then_read_from_their_template(full_decodes: list[bytes | None]) -> None:
    first, headers = encode_task(_envelope())
    values = [_copy(first, uuid.uuid4()) for _ in range(20)]
    decoder = TaskDecoder(max_message_bytes=LIMIT)

    for value in values:
        fast, full = _both(decoder, value, headers)
        assert fast == full

    assert full_decodes == values[:2]


def test_a_copy_read_from_the_template_is_a_task_of_its_own() -> None:
    first, headers = encode_task(_envelope())
    ids = [uuid.uuid4() for _ in range(3)]
    decoder = TaskDecoder(max_message_bytes=LIMIT)

    envelopes = [decoder.decode(_copy(first, task_id), headers) for task_id in ids]

    assert [e.task.id for e in envelopes] == ids
    assert len({id(e) for e in envelopes}) == len({id(e.task) for e in envelopes}) == 3
    envelopes[2].task.timeout = 5.0
    assert envelopes[1].task.timeout == 30.0


def test_an_upper_case_id_in_a_copy_reads_as_full_validation_reads_it(full_decodes: list[bytes | None]) -> None:
    first, headers = encode_task(_envelope())
    decoder = TaskDecoder(max_message_bytes=LIMIT)
    for _ in range(2):
        decoder.decode(_copy(first, uuid.uuid4()), headers)
    task_id = uuid.uuid4()

    fast, full = _both(decoder, _copy(first, task_id, upper=True), headers)

    assert fast == full
    assert fast[2] == task_id
    assert len(full_decodes) == 2


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [(HEADER_SCHEMA, b"2")],
        [("x", b"y")] * (MAX_TASK_HEADERS + 1),
        [("x", b"y" * LIMIT)],
    ],
    ids=["unreadable", "unknown schema", "too many", "too big"],
)
def test_a_copy_with_bad_headers_is_refused_as_full_decoding_refuses_it(headers: KafkaHeaders | None) -> None:
    first, good = encode_task(_envelope())
    decoder = TaskDecoder(max_message_bytes=LIMIT)
    for _ in range(2):
        decoder.decode(_copy(first, uuid.uuid4()), good)

    fast, full = _both(decoder, _copy(first, uuid.uuid4()), headers)

    assert fast == full
    assert fast[0] == "refused"


def test_an_id_that_also_sits_in_a_label_makes_no_template(full_decodes: list[bytes | None]) -> None:
    # Spelt upper case as the id and lower case in a label, the id's text is found once, in the label:
    # changing it there changes the label, not the id, and the proof fails.
    def value(task_id: uuid.UUID) -> bytes:
        plain, _ = encode_task(_envelope(task_id, {"copy": str(task_id)}))
        return plain.replace(f'"id":"{task_id}"'.encode(), f'"id":"{str(task_id).upper()}"'.encode())

    decoder = TaskDecoder(max_message_bytes=LIMIT)
    same_id = uuid.uuid4()
    values = [value(same_id)] + [
        value(same_id).replace(str(same_id).encode(), str(uuid.uuid4()).encode()) for _ in range(5)
    ]

    for v in values:
        fast, full = _both(decoder, v, [])
        assert fast == full

    assert len(full_decodes) == len(values)


def test_a_value_seen_twice_proves_no_template(full_decodes: list[bytes | None]) -> None:
    # Redelivered, one value comes twice. Only the id changing between two copies proves the id is read from
    # where its text was found: here it was found in a key the envelope ignores, not in the id, spelt upper case.
    task_id = uuid.uuid4()
    plain, _ = encode_task(_envelope(task_id))
    spelt = plain.replace(f'"id":"{task_id}"'.encode(), f'"id":"{str(task_id).upper()}"'.encode())

    def value(noted: uuid.UUID) -> bytes:
        return b'{"note":"' + str(noted).encode() + b'",' + spelt[1:]

    decoder = TaskDecoder(max_message_bytes=LIMIT)
    values = [value(task_id), value(task_id), *(value(uuid.uuid4()) for _ in range(3))]

    for v in values:
        fast, full = _both(decoder, v, [])
        assert fast == full
        assert fast[2] == task_id

    assert len(full_decodes) == len(values)


@pytest.mark.parametrize("where", ["before", "after"])
def test_copies_that_differ_past_the_id_prove_no_template(where: str, full_decodes: list[bytes | None]) -> None:
    # The id's text is found in an ignored key, and the id itself, spelt upper case, changes along with it:
    # the two copies differ in two places, and so prove nothing about the first.
    def value(noted: uuid.UUID, task_id: uuid.UUID) -> bytes:
        plain, _ = encode_task(_envelope(task_id))
        spelt = plain.replace(f'"id":"{task_id}"'.encode(), f'"id":"{str(task_id).upper()}"'.encode())
        note = b'"note":"' + str(noted).encode() + b'"'
        return b"{" + note + b"," + spelt[1:] if where == "before" else spelt[:-1] + b"," + note + b"}"

    a, b, c = (uuid.uuid4() for _ in range(3))
    decoder = TaskDecoder(max_message_bytes=LIMIT)
    values = [value(a, a), value(b, b), value(c, b)]

    for v in values:
        fast, full = _both(decoder, v, [])
        assert fast == full

    assert len(full_decodes) == len(values)


# Every way a value can differ from the copies a template was proved on.
_ID_BYTES = st.binary(min_size=36, max_size=36) | st.text(
    alphabet='0123456789abcdefABCDEFg-{}"\\ :', min_size=36, max_size=36
).map(str.encode)


@st.composite
def _variants(draw: st.DrawFn, first: bytes, task_id: bytes) -> bytes:
    """A value made from ``first``, whose task id's text is ``task_id``."""
    kind = draw(st.sampled_from(["copy", "upper", "id bytes", "byte", "insert", "delete", "other"]))
    at = first.index(task_id)
    if kind == "copy":
        return first.replace(task_id, str(draw(st.uuids())).encode())
    if kind == "upper":
        return first.replace(task_id, str(draw(st.uuids())).upper().encode())
    if kind == "id bytes":
        return first[:at] + draw(_ID_BYTES) + first[at + 36 :]
    if kind == "byte":
        where = draw(st.integers(0, len(first) - 1))
        return first[:where] + bytes([draw(st.integers(0, 255))]) + first[where + 1 :]
    if kind == "insert":
        where = draw(st.integers(0, len(first)))
        return first[:where] + draw(st.binary(min_size=1, max_size=3)) + first[where:]
    if kind == "delete":
        where = draw(st.integers(0, len(first) - 1))
        return first[:where] + first[where + draw(st.integers(1, 3)) :]
    return encode_task(draw(task_envelopes()))[0]


@settings(max_examples=300, deadline=None)
@given(st.data(), task_envelopes())
def test_no_sequence_of_values_decodes_otherwise_than_full_validation(
    data: st.DataObject, envelope: TaskEnvelope
) -> None:
    first, headers = encode_task(envelope)
    task_id = str(envelope.task.id).encode()
    # A label may hold the id's text too; the variants need it once, as the id.
    if first.count(task_id) != 1:
        envelope = envelope.model_copy(update={"task": envelope.task.model_copy(update={"labels": EMPTY_LABELS})})
        first, headers = encode_task(envelope)
    values = [first, _copy(first, uuid.uuid4()), *data.draw(st.lists(_variants(first, task_id), max_size=30))]
    decoder = TaskDecoder(max_message_bytes=LIMIT)

    for value in values:
        fast, full = _both(decoder, value, headers)
        assert fast == full


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), min_size=1, max_size=60), st.data())
def test_interleaved_batches_decode_as_full_validation_does(batches: list[str], data: st.DataObject) -> None:
    firsts = {name: encode_task(_envelope(labels={"batch": name}))[0] for name in set(batches)}
    decoder = TaskDecoder(max_message_bytes=LIMIT)

    for name in batches:
        value = _copy(firsts[name], data.draw(st.uuids()))
        fast, full = _both(decoder, value, [])
        assert fast == full


def test_labels_come_back_as_the_shared_read_only_mapping() -> None:
    first, headers = encode_task(_envelope(labels={"site": "a"}))
    decoder = TaskDecoder(max_message_bytes=LIMIT)

    envelopes = [decoder.decode(_copy(first, uuid.uuid4()), headers) for _ in range(3)]

    assert all(isinstance(e.task.labels, Labels) and e.task.labels == {"site": "a"} for e in envelopes)
