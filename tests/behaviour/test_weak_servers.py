"""Weak and slow servers under the default policy: a burst must not cost a task its deadline.

``python3 -m http.server`` listens with a backlog of 5, so 200 requests at once overflow it and
leave connections that look open but whose request the server never takes (see
benchmarks/weak_server.py, which also times TRS against ``xargs -P 200 curl``). The default ramp
starts a burst at a few requests in flight and stops raising it once requests get stranded, and
the default ``tcp_user_timeout`` drops a stranded connection so the attempt is retried. Neither
holds back a slow server: its kernel takes each request at once, and the ramp lets a host that
hasn't answered yet have its whole burst within a few ticks.
"""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.weak_server import python_http_server
from producer import HttpRequest, Task, TransportPolicy
from producer.task_list import create_task_list
from shared.models import DEFAULT_TCP_USER_TIMEOUT
from tests.behaviour.conftest import RunnerFactory
from tests.http_target import HttpTarget


# A burst against a backlog of 5 is a race against the machine's load: nothing runs beside it.
@pytest.mark.alone
async def test_every_task_of_a_burst_against_a_weak_server_gets_its_answer(make_runner: RunnerFactory) -> None:
    with python_http_server() as url:
        template = Task(service_name="behaviour", request=HttpRequest(url=url), timeout=10)
        async with make_runner() as runner:
            results = await (await runner.launch(create_task_list(template, 200))).wait()

    outcomes = Counter(r.response.status_code if r.response is not None else r.outcome for r in results)
    assert outcomes == {200: 200}


async def test_a_burst_against_a_target_that_answers_in_eight_seconds_succeeds_under_the_default_policy(
    make_runner: RunnerFactory, target: HttpTarget
) -> None:
    assert TransportPolicy().response_header_timeout is None
    assert TransportPolicy().tcp_user_timeout == DEFAULT_TCP_USER_TIMEOUT
    # The default timeout too (30 s): only a cut of the attempt itself could fail it.
    slow = Task(service_name="behaviour", request=HttpRequest(url=f"{target.http}/sleep?s=8"))
    async with make_runner() as runner:
        results = await (await runner.launch(create_task_list(slow, 50))).wait()

    assert Counter((r.response.status_code, r.response.body, r.attempts) for r in results if r.response) == {
        (200, b"slept", 1): 50
    }
    assert min(r.elapsed for r in results) >= 8
    # One wave: the ramp held none of them back for another 8 s.
    assert max(r.elapsed for r in results) < 16
