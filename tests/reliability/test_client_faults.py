"""A client under faults: a teardown racing its reader thread, a client killed mid-batch, a broker restart.

A client that may die runs in a process of its own (``tests.reliability.remote_client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from producer import HttpRequest, Task, TaskRunner
from producer.dev.embedded_broker import EmbeddedBroker
from producer.shared_producer import close_shared_producers
from producer.topics import EXPIRY_ROUNDING, TopicAdmin
from shared.wire import batch_times, request_topic
from tests.http_target import HttpTarget
from tests.integration.conftest import new_service
from tests.reliability.remote_client import RemoteClient
from tests.reliability.worker_logs import loud_lines
from tests.trs_cli import trs
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = pytest.mark.integration

#: Rounds of launch, close and cleanup; before the fix, most of them broke the reader thread.
TEARDOWN_ROUNDS = 20
#: The killed client's batch: long enough that the worker is mid-way when the client dies.
KILLED_BATCH = 200
KILLED_TIMEOUT = 5.0
#: Lines at WARNING and above a worker may log for a client that died: none are expected.
MAX_LOUD_LINES = 2
#: The batch a broker restart cuts through: five tasks at a time on the worker, a second each.
RESTART_BATCH = 30
RESTART_TIMEOUT = 6.0
RESTART_GRACE = 1.0
#: Seconds past deadline plus grace that the client's last outcome may come, on a busy machine.
LATE = 3.0


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


async def test_a_client_killed_mid_batch_leaves_the_worker_quiet_and_gc_removes_its_reply_topic(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=2)
    with running_workers(
        kafka_bootstrap, tmp_path, group_id=f"{service.name}-workers", topics=[service.request_topic], max_inflight=10
    ) as (worker,):
        client = RemoteClient(
            "--bootstrap", kafka_bootstrap,
            "--service", service.name,
            "--url", f"{target.http}/sleep?s=0.2",
            "--tasks", str(KILLED_BATCH),
            "--timeout", str(KILLED_TIMEOUT),
            "--grace", "1",
        )  # fmt: skip
        try:
            launched = client.next_event("launched", 30)
            for _ in range(20):
                client.next_event("result", 30)
            client.process.send_signal(signal.SIGKILL)
            killed = client.wait(10)
        finally:
            client.kill()
        topic = launched["reply_topic"]
        times = batch_times(launched["batch"])
        assert times is not None
        # The worker finishes the batch for no one: its results go to a topic nobody reads.
        await asyncio.to_thread(
            wait_until, lambda: finished_tasks(worker) >= KILLED_BATCH, 30, "the worker to finish the batch"
        )
        expired = times[1] + EXPIRY_ROUNDING
        await asyncio.to_thread(wait_until, lambda: datetime.now(UTC) > expired, 30, "the batch's expiry")
        gc = await asyncio.to_thread(
            trs, "topics", "gc", "--older-than", "0s", "--bootstrap-servers", kafka_bootstrap, timeout=60
        )
        async with TaskRunner(mode="remote", service_name=service.name, bootstrap_servers=kafka_bootstrap) as other:
            batch = await other.launch(other.create_task_list(quick_task(service.name, target), 20))
            others = await asyncio.wait_for(batch.wait(), 30)
            await other.close(batch)
        loud = loud_lines(worker.log())

    assert killed == -signal.SIGKILL
    assert gc.returncode == 0, gc.stderr
    assert f"deleted {topic}" in gc.stdout
    assert not admin.exists(topic)
    assert [r.outcome for r in others] == ["response"] * 20
    assert len(loud) <= MAX_LOUD_LINES, loud


def finished_tasks(worker: WorkerProcess) -> float:
    return sum(value for name, value in worker.metrics().items() if name.startswith("trs_worker_tasks_total{"))


def quick_task(service: str, target: HttpTarget) -> Task:
    return Task(service_name=service, request=HttpRequest(url=f"{target.http}/ok"), timeout=10)


async def test_a_broker_that_restarts_empty_mid_batch_ends_every_task_by_its_deadline_and_crashes_nothing(
    target: HttpTarget, tmp_path: Path
) -> None:
    with restartable_broker() as broker:
        service = f"restart-{uuid.uuid4().hex[:8]}"
        TopicAdmin({"bootstrap.servers": broker.bootstrap}).init([service], partitions=2)
        with running_workers(
            broker.bootstrap, tmp_path, group_id=f"{service}-workers", topics=[request_topic(service)], max_inflight=5
        ) as (worker,):
            client = RemoteClient(
                "--bootstrap", broker.bootstrap,
                "--service", service,
                "--url", f"{target.http}/sleep?s=1",
                "--tasks", str(RESTART_BATCH),
                "--timeout", str(RESTART_TIMEOUT),
                "--grace", str(RESTART_GRACE),
                "--then-url", f"{target.http}/ok",
            )  # fmt: skip
            try:
                client.next_event("result", 30)
                broker.restart()
                ended = client.next_event("ended", RESTART_TIMEOUT + RESTART_GRACE + 15)
                client.next_event("done", RESTART_TIMEOUT + RESTART_GRACE + 15)
                exit_code = client.wait(30)
            finally:
                client.kill()
            worker_alive = worker.process.poll() is None

    cut = client.events.index(ended)
    first = [e for e in client.events[:cut] if e["event"] == "result"]
    after = client.events[cut + 1 :]
    assert exit_code == 0, client.stderr
    assert len(first) == len({r["task"] for r in first}) == RESTART_BATCH
    assert {r["outcome"] for r in first} <= {"response", "timeout", "expired", "no_result"}
    assert ended["at"] <= RESTART_TIMEOUT + RESTART_GRACE + LATE
    # The embedded broker re-creates a topic that something writes to, so the request topic may
    # be back by then; if it isn't, the launch says so. Either way the next batch ends, and in time.
    next_outcomes = [e["outcome"] for e in after if e["event"] == "result"]
    refused = [e for e in after if e["event"] == "error"]
    assert (refused and refused[0]["type"] == "TopicMissing") or (len(next_outcomes) == 1)
    assert worker_alive


async def test_a_launch_on_a_broker_that_lost_its_topics_raises_topic_missing_with_the_remedy() -> None:
    with restartable_broker() as broker:
        service = f"restart-{uuid.uuid4().hex[:8]}"
        TopicAdmin({"bootstrap.servers": broker.bootstrap}).init([service], partitions=2)
        client = RemoteClient(
            "--bootstrap", broker.bootstrap,
            "--service", service,
            "--url", "http://127.0.0.1:9/",
            "--tasks", "5",
            "--timeout", str(RESTART_TIMEOUT),
            "--grace", str(RESTART_GRACE),
            "--then-url", "http://127.0.0.1:9/",
        )  # fmt: skip
        try:
            client.next_event("launched", 30)
            broker.restart()
            ended = client.next_event("ended", RESTART_TIMEOUT + RESTART_GRACE + 15)
            refused = client.next_event("error", 30)
            exit_code = client.wait(30)
        finally:
            client.kill()

    assert exit_code == 0, client.stderr
    assert [r["outcome"] for r in client.results()] == ["no_result"] * 5
    assert ended["at"] <= RESTART_TIMEOUT + RESTART_GRACE + LATE
    assert refused["type"] == "TopicMissing"
    assert refused["message"] == (
        f"request topic trs-{service}-http-v1-send does not exist: create it with 'trs topics init --service {service}'"
    )


class RestartableBroker:
    """An embedded broker that restarts on the same port, empty: Tansu keeps everything in memory."""

    def __init__(self) -> None:
        self._broker = EmbeddedBroker().start()
        self.bootstrap = self._broker.bootstrap_servers

    def restart(self) -> None:
        port = self._broker.port
        self._broker.stop()
        self._broker = EmbeddedBroker(port=port).start()

    def stop(self) -> None:
        self._broker.stop()


@contextlib.contextmanager
def restartable_broker() -> Iterator[RestartableBroker]:
    broker = RestartableBroker()
    try:
        yield broker
    finally:
        close_shared_producers(bootstrap_servers=broker.bootstrap)
        broker.stop()
