"""Workers started and stopped by the tests: joining, offsets, backpressure, SIGTERM and kill -9."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from producer.topics import TopicAdmin
from shared.errors import ErrorCode
from tests.http_target import HttpTarget
from tests.integration.conftest import new_service
from tests.kafka_io import committed, new_test_batch, produce, read_results
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = pytest.mark.integration


def group() -> str:
    return f"workers-{uuid.uuid4().hex[:8]}"


def test_readyz_is_503_until_the_worker_joins_its_group(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path: Path
) -> None:
    service = new_service(admin)
    with running_workers(kafka_bootstrap, tmp_path, group_id=group(), topics=[service.request_topic], ready=False) as (
        worker,
    ):
        first = _first_answer(worker, "/readyz")
        worker.wait_ready()

        assert first == (503, "not yet a member of the consumer group\n")
        assert worker.get("/readyz") == (200, "ok\n")
        assert worker.get("/healthz") == (200, "ok\n")
        assert worker.get("/nope")[0] == 404


def test_out_of_order_completion_never_commits_past_an_unfinished_task(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=1)
    batch = new_test_batch(admin, service.name)
    key = uuid.uuid4().hex
    slow = [batch.envelope(f"{target.http}/sleep?s=4&key={key}") for _ in range(3)]
    fast = [batch.envelope(f"{target.http}/ok") for _ in range(60)]
    sent = produce(kafka_bootstrap, service.request_topic, slow + fast, partition=0)
    slow_offsets = sorted(s.offset for s in sent if s.task_id in {e.task.id for e in slow})
    group_id = group()

    with running_workers(kafka_bootstrap, tmp_path, group_id=group_id, topics=[service.request_topic]):
        fast_results = read_results(kafka_bootstrap, batch.reply_topic, 60)
        samples = []
        # Sampled while the slow tasks run; they sleep 4 s, so 30 s means they never ended.
        deadline = time.monotonic() + 30
        while target.sleeping(key) == 3:
            assert time.monotonic() < deadline, "the slow tasks never ended"
            samples.append(committed(kafka_bootstrap, group_id, service.request_topic, 1)[0])
            time.sleep(0.1)
        results = read_results(kafka_bootstrap, batch.reply_topic, 63)
        wait_until(
            lambda: committed(kafka_bootstrap, group_id, service.request_topic, 1)[0] == 63,
            what="the commit of every offset",
        )

    assert slow_offsets == [0, 1, 2]
    # The fast tasks finished while the slow ones, at lower offsets, still ran.
    assert {r.result.task_id for r in fast_results} == {e.task.id for e in fast}
    assert len(samples) >= 5
    assert all(offset <= slow_offsets[0] for offset in samples), samples
    assert {r.result.task_id for r in results} == {e.task.id for e in slow + fast}


def test_backpressure_holds_tasks_in_flight_at_the_limit_and_the_worker_stays_in_its_group(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin)
    batch = new_test_batch(admin, service.name, seconds=120)
    key = uuid.uuid4().hex
    envelopes = [batch.envelope(f"{target.http}/sleep?s=2&key={key}", timeout=120) for _ in range(40)]
    produce(kafka_bootstrap, service.request_topic, envelopes)

    # 40 tasks of 2 s, 10 at a time, take 8 s: longer than the 6 s max.poll.interval.ms.
    with running_workers(
        kafka_bootstrap, tmp_path, group_id=group(), topics=[service.request_topic], max_inflight=10
    ) as (worker,):
        inflight, paused, ready = [], [], []
        # Sampled until every task has run at the target, which takes 8 s.
        deadline = time.monotonic() + 60
        while target.hits(key) < 40 or target.sleeping(key) > 0:
            assert time.monotonic() < deadline, f"{target.hits(key)} of 40 tasks reached the target"
            metrics = worker.metrics()
            inflight.append(metrics["trs_worker_tasks_inflight"])
            paused.append(metrics["trs_worker_partitions_paused"])
            ready.append(worker.get("/readyz")[0])
            time.sleep(0.2)
        results = read_results(kafka_bootstrap, batch.reply_topic, 40, settle=1.0)
        log = worker.log()

    assert target.peak(key) == 10
    assert max(inflight) == 10
    assert 1.0 in paused
    assert set(ready) == {200}
    # One result per task: no rebalance handed a partition to a second run.
    assert Counter(r.result.task_id for r in results) == Counter(e.task.id for e in envelopes)
    assert target.hits(key) == 40
    assert "revoked" not in log
    assert "lost" not in log


def test_sigterm_lets_tasks_in_flight_finish_then_commits_and_exits_0(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin)
    batch = new_test_batch(admin, service.name)
    key = uuid.uuid4().hex
    envelopes = [batch.envelope(f"{target.http}/sleep?s=2&key={key}") for _ in range(10)]
    group_id = group()

    with running_workers(kafka_bootstrap, tmp_path, group_id=group_id, topics=[service.request_topic]) as (worker,):
        produce(kafka_bootstrap, service.request_topic, envelopes)
        wait_until(lambda: target.sleeping(key) == 10, what="ten tasks in flight")
        code = worker.terminate()
        log = worker.log()

    results = read_results(kafka_bootstrap, batch.reply_topic, 10)
    assert code == 0
    assert len(results) == 10
    assert all(r.result.response is not None and r.result.response.status_code == 200 for r in results)
    # Every partition's commit is past all of its tasks (a partition that got none has no commit).
    offsets = committed(kafka_bootstrap, group_id, service.request_topic, service.partitions)
    assert sum(max(0, offset) for offset in offsets) == 10
    assert "draining: 10 tasks in flight" in log
    assert "response=10" in log


def test_sigterm_cuts_tasks_that_outlast_the_grace_period(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin)
    batch = new_test_batch(admin, service.name)
    key = uuid.uuid4().hex
    envelopes = [batch.envelope(f"{target.http}/sleep?s=30&key={key}") for _ in range(4)]

    with running_workers(
        kafka_bootstrap, tmp_path, group_id=group(), topics=[service.request_topic], grace_period=1
    ) as (worker,):
        produce(kafka_bootstrap, service.request_topic, envelopes)
        wait_until(lambda: target.sleeping(key) == 4, what="four tasks in flight")
        started = time.monotonic()
        code = worker.terminate()
        stopped_in = time.monotonic() - started

    results = read_results(kafka_bootstrap, batch.reply_topic, 4)
    assert code == 0
    assert stopped_in < 20
    assert {r.result.task_id for r in results} == {e.task.id for e in envelopes}
    assert all(r.result.error is not None and r.result.error.code is ErrorCode.CANCELLED for r in results)


def test_kill_9_of_one_worker_loses_nothing_and_repeats_only_uncommitted_tasks(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=4)
    batch = new_test_batch(admin, service.name, seconds=120)
    envelopes = [batch.envelope(f"{target.http}/sleep?s=0.2", timeout=120) for _ in range(600)]
    group_id = group()

    with running_workers(
        kafka_bootstrap, tmp_path, 2, group_id=group_id, topics=[service.request_topic], max_inflight=10
    ) as (victim, survivor):
        sent = produce(kafka_bootstrap, service.request_topic, envelopes)
        read_results(kafka_bootstrap, batch.reply_topic, 150)
        victim.kill()
        # Before the group notices (one session timeout), these are the victim's last commits.
        at_kill = committed(kafka_bootstrap, group_id, service.request_topic, service.partitions)
        results = read_results(kafka_bootstrap, batch.reply_topic, 600, timeout=120, settle=2.0)
        survivor_alive = survivor.process.poll() is None

    placed = {s.task_id: s for s in sent}
    counts = Counter(r.result.task_id for r in results)
    duplicates = [task_id for task_id, n in counts.items() if n > 1]
    workers = Counter(r.worker for r in results)
    assert set(counts) == {e.task.id for e in envelopes}
    assert len(workers) == 2, workers
    for task_id in duplicates:
        where = placed[task_id]
        assert where.offset >= at_kill[where.partition], (where, at_kill)
    assert survivor_alive


def _first_answer(worker: WorkerProcess, path: str, timeout: float = 30.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return worker.get(path)
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{path} never answered")
