"""A worker frozen past its session timeout starts nothing more until it knows it still owns its partitions.

SIGSTOP freezes every thread of the worker, librdkafka's included. While it is frozen the group
gives its partitions to the other worker, which runs their tasks again from the last commit. After
SIGCONT the frozen worker still holds records of those partitions; it must let them go rather than
start them. So the tasks that run twice are at most those it had in flight when it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from producer import HttpRequest, Task, TaskResult, TaskRunner
from producer.topics import TopicAdmin
from tests.integration.conftest import new_service
from tests.waiting import wait_until
from tests.worker_process import SESSION_TIMEOUT_MS, WorkerProcess, running_workers

pytestmark = [pytest.mark.integration, pytest.mark.alone]

MAX_INFLIGHT = 50
#: Seconds each task's request takes at the target: none of the first wave ends before the freeze.
TASK_SECONDS = 2.0
#: Seconds between the fetcher's beats after which the worker doubts it still owns its partitions.
STALL_AFTER = SESSION_TIMEOUT_MS / 1000 / 2
MAX_POLL_INTERVAL_MS = 20_000


class RecordingTarget(ThreadingHTTPServer):
    """Answers ``GET /task/<id>`` after ``TASK_SECONDS``, counting each id it serves."""

    daemon_threads = True
    # Both workers connect at once, up to 2 * MAX_INFLIGHT, to a server that shares the test process's GIL:
    # socketserver's backlog of 5 drops their SYNs, and their connects then fail on the transport's TCP timeout.
    request_queue_size = 1024

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TaskHandler)
        self.lock = threading.Lock()
        self.served: Counter[str] = Counter()
        self.open = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def snapshot(self) -> tuple[Counter[str], int]:
        """Each task id's runs, and how many requests are still being answered."""
        with self.lock:
            return Counter(self.served), self.open


class _TaskHandler(BaseHTTPRequestHandler):
    server: RecordingTarget
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.served[self.path.removeprefix("/task/")] += 1
            self.server.open += 1
        try:
            time.sleep(TASK_SECONDS)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        finally:
            with self.server.lock:
                self.server.open -= 1

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def recording_target() -> Iterator[RecordingTarget]:
    server = RecordingTarget()
    thread = threading.Thread(target=server.serve_forever, name="recording-target", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class AtStop:
    """The frozen worker's gauges just before SIGSTOP."""

    inflight: int
    finished: int


def _at_stop(worker: WorkerProcess) -> AtStop:
    metrics = worker.metrics()
    finished = sum(v for k, v in metrics.items() if k.startswith("trs_worker_tasks_total{"))
    return AtStop(int(metrics["trs_worker_tasks_inflight"]), int(finished))


def _tasks(service: str, target: RecordingTarget, count: int) -> list[Task]:
    ids = [uuid.uuid4() for _ in range(count)]
    return [
        Task(id=i, service_name=service, request=HttpRequest(url=f"{target.url}/task/{i}"), timeout=50) for i in ids
    ]


def _freeze(victim: WorkerProcess, until: Callable[[float], bool], timeout: float) -> AtStop:
    """SIGSTOP ``victim`` at a full first wave of tasks; SIGCONT once ``until(seconds frozen)`` holds."""
    wait_until(lambda: _at_stop(victim).inflight == MAX_INFLIGHT, 20, "the worker's first wave of tasks")
    at_stop = _at_stop(victim)
    victim.process.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_until(lambda: until(time.monotonic() - stopped), timeout, "the end of the freeze")
    finally:
        victim.process.send_signal(signal.SIGCONT)
    return at_stop


async def _run(bootstrap: str, tasks: list[Task], freeze: Callable[[], AtStop]) -> tuple[list[TaskResult], AtStop]:
    """Run ``tasks`` as one remote batch while ``freeze()`` runs on a thread."""
    async with TaskRunner(mode="remote", service_name=tasks[0].service_name, bootstrap_servers=bootstrap) as runner:
        batch = await runner.launch(tasks)
        frozen = asyncio.ensure_future(asyncio.to_thread(freeze))
        results = [result async for result in batch]
        at_stop = await frozen
        await runner.close(batch)
    return results, at_stop


def _assert_one_response_each(tasks: list[Task], results: list[TaskResult]) -> None:
    # The client deduplicates by task id: each task exactly one result, and every one a response.
    assert sorted(str(r.task_id) for r in results) == sorted(str(t.id) for t in tasks)
    outcomes = Counter(r.outcome for r in results)
    assert all(r.response is not None and r.response.status_code == 200 for r in results), outcomes


def test_a_worker_frozen_past_its_session_timeout_reruns_at_most_what_it_had_in_flight(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=4)
    with (
        recording_target() as target,
        running_workers(
            kafka_bootstrap,
            tmp_path,
            2,
            group_id=f"workers-{uuid.uuid4().hex[:8]}",
            topics=[service.request_topic],
            max_inflight=MAX_INFLIGHT,
            # Room for a revoke to let its running tasks finish (half of it; see consumer.fetcher).
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        ) as (victim, survivor),
    ):
        tasks = _tasks(service.name, target, 400)
        assigned_before = survivor.log().count("assigned")

        def taken_over(frozen: float) -> bool:
            return frozen > SESSION_TIMEOUT_MS / 1000 and survivor.log().count("assigned") > assigned_before

        results, at_stop = asyncio.run(_run(kafka_bootstrap, tasks, lambda: _freeze(victim, taken_over, 30)))
        served, _ = target.snapshot()
        log = victim.log()

    twice = sum(1 for runs in served.values() if runs > 1)
    print(f"frozen worker: {at_stop.inflight} tasks in flight at the stop; {twice} tasks ran twice")
    assert at_stop == AtStop(inflight=MAX_INFLIGHT, finished=0)
    _assert_one_response_each(tasks, results)
    assert max(served.values()) <= 2
    assert twice <= at_stop.inflight, log[-4000:]
    assert "the worker stalled for" in log
    assert "lost" in log


def test_a_worker_frozen_for_less_than_its_session_timeout_goes_on_once_a_commit_proves_it_owns_its_partitions(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=4)
    with (
        recording_target() as target,
        running_workers(
            kafka_bootstrap,
            tmp_path,
            2,
            group_id=f"workers-{uuid.uuid4().hex[:8]}",
            topics=[service.request_topic],
            max_inflight=MAX_INFLIGHT,
        ) as (victim, survivor),
    ):
        tasks = _tasks(service.name, target, 150)

        def short_freeze_over(frozen: float) -> bool:
            # Past the stall threshold, short of the session timeout (heartbeats come every 0.6 s).
            return frozen > STALL_AFTER + 1

        results, at_stop = asyncio.run(_run(kafka_bootstrap, tasks, lambda: _freeze(victim, short_freeze_over, 10)))
        served, _ = target.snapshot()
        log, other_log = victim.log(), survivor.log()

    assert at_stop == AtStop(inflight=MAX_INFLIGHT, finished=0)
    _assert_one_response_each(tasks, results)
    # It kept its partitions, and ran every task it held once it knew.
    assert max(served.values()) == 1
    assert "the worker stalled for" in log
    assert "a commit proved the worker still owns" in log
    assert "lost" not in log
    assert "revoked" not in other_log
