"""A worker started before its broker or its topics waits for them, says why on ``/readyz``, and serves once they exist.

In Kubernetes brokers, topic operators and workers start in any order. Each test here has an
embedded broker of its own, started (or not) on a port the worker was given beforehand.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from consumer.cli import main
from consumer.fetcher import Fetcher, FetcherConfig
from consumer.flow import Backlog
from consumer.kafka_config import consumer_config, control_config
from consumer.offsets import OffsetTracker
from consumer.settings import WorkerSettings
from producer.dev.embedded_broker import EmbeddedBroker, free_port
from producer.topics import DLQ_PARTITIONS, TopicAdmin, TopicSpec
from shared.settings import KafkaSettings
from shared.wire import CONTROL_TOPIC, DLQ_TOPIC, request_topic
from tests.http_target import HttpTarget
from tests.kafka_io import new_test_batch, produce, read_results
from tests.waiting import wait_until
from tests.worker_process import ROOT, WorkerProcess

pytestmark = pytest.mark.integration

#: How long the first answer of ``/healthz`` may take: the interpreter's start and imports.
FIRST_ANSWER_WITHIN = 10.0


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Workers started by the test, killed afterwards if still running."""
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.close()


def _start_worker(started: list[WorkerProcess], bootstrap: str, tmp_path: Path, service: str) -> WorkerProcess:
    worker = WorkerProcess(
        bootstrap,
        tmp_path / f"worker-{len(started)}.log",
        group_id=f"workers-{uuid.uuid4().hex[:8]}",
        topics=[request_topic(service)],
    )
    started.append(worker)
    return worker


def _first_answer(worker: WorkerProcess, path: str) -> tuple[float, tuple[int, str]]:
    """Seconds until ``path`` answered at all, and its answer."""
    began = time.monotonic()
    while True:
        try:
            return time.monotonic() - began, worker.get(path)
        except OSError:
            if worker.process.poll() is not None:
                raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log()}") from None
            if time.monotonic() - began > FIRST_ANSWER_WITHIN:
                raise AssertionError(f"{path} did not answer within {FIRST_ANSWER_WITHIN:g} s") from None
            time.sleep(0.02)


def _readyz_says(worker: WorkerProcess, reason: str) -> bool:
    try:
        return worker.get("/readyz") == (503, f"{reason}\n")
    except OSError:
        # Not listening yet.
        return False


def _waiting_lines(log: str) -> list[str]:
    """The worker's own log lines about what it waits for."""
    lines = []
    for line in log.splitlines():
        if line.startswith("{"):
            message = json.loads(line)["message"]
            if message.startswith("waiting for"):
                lines.append(message)
    return lines


def _serves_a_batch(bootstrap: str, admin: TopicAdmin, service: str, target: HttpTarget) -> None:
    batch = new_test_batch(admin, service)
    envelopes = [batch.envelope(f"{target.http}/ok") for _ in range(20)]
    produce(bootstrap, request_topic(service), envelopes)
    results = read_results(bootstrap, batch.reply_topic, 20)
    assert {r.result.task_id for r in results} == {e.task.id for e in envelopes}
    assert all(r.result.response is not None and r.result.response.status_code == 200 for r in results)


def test_a_worker_started_before_its_broker_serves_probes_at_once_waits_then_runs_tasks(
    tmp_path: Path, target: HttpTarget, worker_factory: list[WorkerProcess]
) -> None:
    broker = EmbeddedBroker()
    service = f"startup-{uuid.uuid4().hex[:8]}"
    worker = _start_worker(worker_factory, broker.bootstrap_servers, tmp_path, service)
    began = time.monotonic()
    no_broker = f"no broker answered at {broker.bootstrap_servers}"
    try:
        answered_in, healthz = _first_answer(worker, "/healthz")
        # The first look for the broker takes its timeout, a second.
        wait_until(lambda: _readyz_says(worker, no_broker), 5, "/readyz to name the broker")
        # Long enough for several looks.
        wait_until(lambda: time.monotonic() - began > 5, 10, "five seconds of waiting")
        still_waiting = worker.process.poll() is None and _readyz_says(worker, no_broker)
        waited = time.monotonic() - began

        broker.start()
        admin = TopicAdmin({"bootstrap.servers": broker.bootstrap_servers})
        try:
            admin.init([service], partitions=2)
            worker.wait_ready(60)
            _serves_a_batch(broker.bootstrap_servers, admin, service, target)
        finally:
            admin.close()
        log = worker.log()
        assert worker.terminate() == 0
    finally:
        broker.stop()

    print(f"librdkafka lines while the worker waited {waited:.0f} s: {log.count('|FAIL|')}")
    assert answered_in < FIRST_ANSWER_WITHIN
    assert healthz == (200, "ok\n")
    assert still_waiting
    # For each thing waited for, one line at once, then one every 30 s: not one per look. (The
    # broker may be seen up before the topics are created, so that is a second thing.)
    waiting = Counter(line.split(" (")[0] for line in _waiting_lines(log))
    assert next(iter(waiting)) == f"waiting for Kafka: no broker answered at {broker.bootstrap_servers}"
    assert set(waiting) <= {
        next(iter(waiting)),
        "waiting for Kafka: topic trs-dlq missing: create it with 'trs topics init'",
    }
    assert max(waiting.values()) <= 1 + waited // 30, waiting
    assert "the broker answers and the shared topics exist: starting" in log


def test_a_worker_started_before_topics_init_says_which_topic_is_missing_then_runs_tasks(
    tmp_path: Path, target: HttpTarget, worker_factory: list[WorkerProcess]
) -> None:
    service = f"startup-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker:
        admin = TopicAdmin({"bootstrap.servers": broker.bootstrap_servers})
        worker = _start_worker(worker_factory, broker.bootstrap_servers, tmp_path, service)
        wait_until(
            lambda: _readyz_says(worker, "topic trs-dlq missing: create it with 'trs topics init'"),
            FIRST_ANSWER_WITHIN,
            "/readyz to name trs-dlq",
        )
        admin.create(TopicSpec(DLQ_TOPIC, DLQ_PARTITIONS, timedelta(days=1)))
        wait_until(
            lambda: _readyz_says(worker, "topic trs-control missing: create it with 'trs topics init'"),
            10,
            "/readyz to name trs-control",
        )
        admin.init([service], partitions=2)
        worker.wait_ready(60)
        _serves_a_batch(broker.bootstrap_servers, admin, service, target)
        admin.close()
        assert worker.terminate() == 0
        log = worker.log()

    waiting = _waiting_lines(log)
    # One line for each thing waited for, as it changes.
    assert [line.split(" (")[0] for line in waiting] == [
        "waiting for Kafka: topic trs-dlq missing: create it with 'trs topics init'",
        "waiting for Kafka: topic trs-control missing: create it with 'trs topics init'",
    ]


def test_sigterm_while_waiting_for_the_broker_exits_0_promptly(
    tmp_path: Path, worker_factory: list[WorkerProcess]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    worker = _start_worker(worker_factory, address, tmp_path, "startup-sigterm")
    _first_answer(worker, "/healthz")
    wait_until(lambda: _readyz_says(worker, f"no broker answered at {address}"), 10, "/readyz to name the broker")

    began = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(15)
    took = time.monotonic() - began

    assert code == 0
    assert took < 5, took
    assert "stopped before it started" in worker.log()


def _run_worker(*flags: str) -> tuple[subprocess.CompletedProcess[str], float]:
    command = [sys.executable, "-m", "consumer", "--host", "127.0.0.1", "--port", "0", "--log-format", "text", *flags]
    began = time.monotonic()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    return completed, time.monotonic() - began


def test_a_startup_timeout_against_no_broker_exits_1_with_a_one_line_reason() -> None:
    address = f"127.0.0.1:{free_port()}"

    completed, took = _run_worker("--bootstrap-servers", address, "--startup-timeout", "2")

    assert completed.returncode == 1
    reason = f"trs-worker could not run: no Kafka broker answered at {address} within 2 s"
    assert [line for line in completed.stderr.splitlines() if "could not run" in line] == [
        line for line in completed.stderr.splitlines() if reason in line
    ]
    assert reason in completed.stderr
    assert took < 15, took


def test_a_startup_timeout_with_the_topics_missing_exits_1_with_the_remedy() -> None:
    with EmbeddedBroker() as empty:
        completed, _ = _run_worker("--bootstrap-servers", empty.bootstrap_servers, "--startup-timeout", "2")

    assert completed.returncode == 1
    assert (
        f"trs-worker could not run: topic trs-dlq does not exist at {empty.bootstrap_servers}: "
        "create it with 'trs topics init'"
    ) in completed.stderr


def test_a_startup_timeout_must_be_positive() -> None:
    result = CliRunner().invoke(main, ["--startup-timeout", "0"])

    assert result.exit_code == 2
    assert "invalid setting: startup_timeout: Input should be greater than 0" in result.output


def test_the_fetcher_waits_for_the_control_topic_and_reads_it_once_it_exists() -> None:
    # The worker checks both shared topics before it starts; the control topic can still go
    # missing between that look and the fetcher's, so the fetcher waits for it too.
    with EmbeddedBroker() as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        worker = WorkerSettings(topics=[request_topic("startup-control")], session_timeout_ms=6000)
        failures: list[BaseException] = []
        fetcher = Fetcher(
            consumer_config=consumer_config(kafka, worker),
            control_config=control_config(kafka, worker),
            tracker=OffsetTracker(),
            config=FetcherConfig(
                topics=worker.topics, consume_batch=10, commit_interval=0.5, pause_after=0.5, revoke_wait=1
            ),
            backlog=Backlog(10),
            on_records=lambda records: None,
            on_cancel=lambda order: None,
            on_failure=failures.append,
            on_ownership=lambda: None,
        )
        fetcher.start()
        try:
            wait_until(lambda: fetcher.control_problem is not None, 10, "the fetcher to miss trs-control")
            missing = fetcher.control_problem
            admin = TopicAdmin({"bootstrap.servers": broker.bootstrap_servers})
            admin.init()
            admin.close()
            wait_until(lambda: fetcher.control_problem is None, 10, "the fetcher to read trs-control")
        finally:
            fetcher.close(10)

    assert missing == f"topic {CONTROL_TOPIC} missing: create it with 'trs topics init'"
    assert failures == []
