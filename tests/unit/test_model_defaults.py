"""What a task gets when it leaves a field out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.models import ClientPolicy, HttpRequest, RetryPolicy, Task, TransportPolicy


def test_tasks_without_a_policy_share_the_frozen_default() -> None:
    one = Task(service_name="svc", request=HttpRequest(url="http://h/"))
    two = Task.model_validate({"service_name": "svc", "request": {"url": "http://h/"}, "policy": {}})

    assert one.policy == ClientPolicy(retry=RetryPolicy(), transport=TransportPolicy())
    assert one.policy.retry.retries == 3
    assert one.policy.transport is two.policy.transport
    assert one.policy.retry is two.policy.retry
    assert "policy" not in one.model_fields_set
    with pytest.raises(ValidationError, match="frozen"):
        one.policy.retry.retries = 9  # type: ignore[misc]


def test_a_default_request_gets_its_own_header_list() -> None:
    one = HttpRequest(url="http://h/")
    two = HttpRequest(url="http://h/")

    one.headers.append(("A", "1"))

    assert two.headers == []
