"""Equal policies validated from dicts are one object, so the engine finds their pool by identity."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.models import DEFAULT_POLICY, ClientPolicy, HttpRequest, RetryPolicy, Task, TaskEnvelope
from shared.wire import decode_task, encode_task


def _task(policy: object) -> Task:
    return Task.model_validate({"service_name": "a", "request": {"url": "http://a/"}, "policy": policy})


def _message(policy: ClientPolicy) -> bytes:
    task = Task(service_name="svc", request=HttpRequest(url="http://127.0.0.1/"), policy=policy)
    envelope = TaskEnvelope(batch_id="b", reply_topic="trs-svc-http-v1-rcv-b", deadline=datetime.now(UTC), task=task)
    return encode_task(envelope)[0]


def test_decoded_default_policies_are_the_shared_default() -> None:
    first, second = (decode_task(_message(ClientPolicy())) for _ in range(2))
    assert first.task.policy is second.task.policy is DEFAULT_POLICY


def test_equal_decoded_policies_are_one_object_and_unequal_ones_are_not() -> None:
    five, again = (decode_task(_message(ClientPolicy(retry=RetryPolicy(retries=5)))) for _ in range(2))
    six = decode_task(_message(ClientPolicy(retry=RetryPolicy(retries=6))))
    assert five.task.policy is again.task.policy
    assert (five.task.policy.retry.retries, six.task.policy.retry.retries) == (5, 6)


def test_a_partial_policy_is_the_same_object_as_its_full_equal() -> None:
    full = _task({"retry": {"retries": 4}})
    again = _task({"retry": {"retries": 4, "backoff_initial": 0.1}})
    assert full.policy is again.policy


def test_a_dict_changed_after_validation_does_not_change_what_it_was_validated_to() -> None:
    raw = {"retry": {"retries": 7}}
    first = _task(raw)
    raw["retry"]["retries"] = 8
    second = _task(raw)
    assert (first.policy.retry.retries, second.policy.retry.retries) == (7, 8)


def test_an_invalid_policy_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(ValidationError, match="greater than or equal to 0"):
            _task({"retry": {"retries": -1}})


def test_the_default_stays_the_shared_one_however_many_policies_came_before() -> None:
    for retries in range(40):
        _task({"retry": {"retries": retries}})
    assert _task({}).policy is DEFAULT_POLICY
    assert decode_task(_message(ClientPolicy())).task.policy is DEFAULT_POLICY
