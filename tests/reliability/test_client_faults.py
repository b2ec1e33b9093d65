"""A client under faults: a teardown racing its own reader thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from producer import HttpRequest, Task, TaskRunner
from producer.topics import TopicAdmin
from tests.integration.conftest import new_service

pytestmark = pytest.mark.integration

#: Rounds of launch, close and cleanup; before the fix, most of them broke the reader thread.
TEARDOWN_ROUNDS = 20


async def test_cleanup_right_after_close_never_breaks_the_reply_reader_thread(
    kafka_bootstrap: str, admin: TopicAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = new_service(admin, partitions=1)
    broken: list[str] = []

    def record(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        broken.append(f"{name}: {args.exc_type.__name__}: {args.exc_value}")

    monkeypatch.setattr(threading, "excepthook", record)
    task = Task(service_name=service.name, request=HttpRequest(url="http://127.0.0.1:9/"), timeout=5)
    for _ in range(TEARDOWN_ROUNDS):
        runner = TaskRunner(mode="remote", service_name=service.name, bootstrap_servers=kafka_bootstrap)
        batch = await runner.launch([task.model_copy()])
        await runner.close(batch)
        # One step for the background deletion, which starts waiting on the reader's unassignment:
        # what a caller between the two calls (a sync wrapper, another coroutine) gives it.
        await asyncio.sleep(0)
        await runner.cleanup()

    assert broken == []
