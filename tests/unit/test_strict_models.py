"""Input models refuse unknown keys, in Python and on the wire; results stay lenient (see README)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shared.errors import InvalidEnvelope
from shared.models import ClientPolicy, HttpRequest, RetryPolicy, Task, TaskEnvelope, TransportPolicy
from shared.wire import decode_task


@pytest.mark.parametrize(
    ("model", "fields"),
    [
        (Task, {"service_name": "cli", "request": {"url": "http://127.0.0.1/"}, "timout": 1}),
        (HttpRequest, {"url": "http://127.0.0.1/", "header": []}),
        (RetryPolicy, {"retrys": 1}),
        (TransportPolicy, {"max_conections": 1}),
        (ClientPolicy, {"retries": 1}),
    ],
)
def test_an_unknown_key_is_refused(model: type[Task], fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(fields)

    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]


def test_a_task_has_empty_labels_unless_given() -> None:
    assert Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1/")).labels == {}


def test_a_task_envelope_with_an_unknown_task_key_is_invalid_and_its_client_is_still_told() -> None:
    task = Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1/"))
    envelope = TaskEnvelope(
        batch_id="b1",
        reply_topic="trs-cli-http-v1-rcv-b1",
        deadline=datetime.now(UTC) + timedelta(seconds=5),
        task=task,
    )
    value = json.loads(envelope.model_dump_json())
    value["task"]["max_redirects"] = 3

    with pytest.raises(InvalidEnvelope) as info:
        decode_task(json.dumps(value).encode())

    assert info.value.reason == "task.max_redirects: Extra inputs are not permitted"
    assert info.value.reply_topic == "trs-cli-http-v1-rcv-b1"
    assert info.value.task_id == str(task.id)
    assert uuid.UUID(info.value.task_id) == task.id
