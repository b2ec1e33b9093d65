"""Misbehaving targets, one scenario each, in local mode and in remote mode through a worker.

Each scenario runs a batch against one route of ``tests.faulty_targets`` and checks that every
task ends with the outcome its policy gives, attempt by attempt where the target can tell; that no
task outlives its deadline (a result's elapsed time, the batch's end, and the target's view of
each request, which the client must have answered or hung up on); and, in remote mode, where it
runs three batches in a row, that the worker's resident memory stays flat from the first batch's
end to the last one's. The figures go to stdout as ``RELIABILITY {json}`` lines.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from producer import ClientPolicy, HostPolicy, HttpRequest, Task, TaskResult, TaskRunner, TransportPolicy
from producer.topics import TopicAdmin
from tests.faulty_targets import FaultyTargets, faulty_targets
from tests.integration.conftest import Service, new_service
from tests.process_memory import RssSampler, rss_bytes
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = [pytest.mark.integration, pytest.mark.alone]

TASKS = 200
#: The response body limit of both modes here; the big-body target sends ten times as much.
LIMIT = 10_000
#: Seconds a result's elapsed time may pass its task's timeout, and the batch its last deadline.
MARGIN = 0.5
#: Seconds the target's clock and the client's timers may disagree by about a deadline, on a busy machine.
JITTER = 0.25
#: The client's default wait for a remote result past its deadline.
RESULT_GRACE = 5.0
#: Batches of a remote scenario, and how much the worker's RSS may grow from the first one's end
#: to the last one's (the peak while they run is reported, not bounded).
REMOTE_BATCHES = 3
RSS_GROWTH = 0.30
MODES = ["local", "remote"]
#: Every task here meets the same misbehaving host and must show its own retries to the end; the
#: breaker would end the rest ``circuit_open`` after five failures (tests/behaviour/test_fleet.py).
NO_BREAKER = HostPolicy(breaker=None)


@dataclass(frozen=True)
class FaultWorker:
    service: Service
    worker: WorkerProcess


@dataclass(frozen=True)
class Setup:
    """Where a scenario's tasks run: locally, or through the fault worker."""

    mode: str
    bootstrap: str | None = None
    fault_worker: FaultWorker | None = None


@dataclass(frozen=True)
class Ran:
    """One scenario's batches: each task's result by its key, how long each batch took, the worker's RSS
    during them and after each."""

    results: dict[str, TaskResult]
    seconds: list[float]
    rss: RssSampler | None
    rss_after: list[int]
    #: Each task's deadline, in seconds since the epoch: its batch's launch plus its timeout.
    deadlines: dict[str, float]
    #: What the target saw (see ``tests.faulty_targets``), once every task had its outcome.
    seen: dict[str, Any]


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultyTargets]:
    with faulty_targets(seed=20) as running:
        yield running


@pytest.fixture(scope="module")
def fault_worker(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultWorker]:
    """One worker with the body limit, shared by the remote scenarios."""
    service = new_service(admin)
    with running_workers(
        kafka_bootstrap,
        tmp_path_factory.mktemp("fault-worker"),
        group_id=f"workers-{uuid.uuid4().hex[:8]}",
        topics=[service.request_topic],
        max_response_bytes=LIMIT,
    ) as (worker,):
        yield FaultWorker(service, worker)


@pytest.fixture(params=MODES)
def setup(request: pytest.FixtureRequest) -> Setup:
    if request.param == "local":
        return Setup("local")
    return Setup("remote", request.getfixturevalue("kafka_bootstrap"), request.getfixturevalue("fault_worker"))


def _task(service: str, faults: FaultyTargets, route: str, *, timeout: float, **policy: object) -> tuple[str, Task]:
    task_id = uuid.uuid4()
    separator = "&" if "?" in route else "?"
    task = Task(
        id=task_id,
        service_name=service,
        request=HttpRequest(url=f"{faults.url}/{route}{separator}key={task_id}"),
        timeout=timeout,
        policy=ClientPolicy(**{"host": NO_BREAKER, **policy}),
    )
    return str(task_id), task


async def _run(setup: Setup, route: str, *, timeout: float, faults: FaultyTargets, **policy: object) -> Ran:
    """Run batches of ``TASKS`` tasks against ``route`` and check what every scenario shares.

    Remote mode runs ``REMOTE_BATCHES`` batches in a row: the first one settles the worker's
    allocator for this kind of work (200 such requests at once), and the worker's RSS after the
    last one must be within ``RSS_GROWTH`` of its RSS after the first.
    """
    if setup.fault_worker is None:
        runner = TaskRunner(mode="local", service_name="faults", max_response_bytes=LIMIT)
        grace, rss, batches = 0.0, None, 1
    else:
        service = setup.fault_worker.service.name
        runner = TaskRunner(mode="remote", service_name=service, bootstrap_servers=setup.bootstrap)
        rss = RssSampler(setup.fault_worker.worker.process.pid, interval=0.2)
        grace, batches = RESULT_GRACE, REMOTE_BATCHES
    results: list[TaskResult] = []
    durations: list[float] = []
    rss_after: list[int] = []
    deadlines: dict[str, float] = {}
    async with runner:
        with rss or contextlib.nullcontext():
            for _ in range(batches):
                keyed = dict(_task(runner.service_name, faults, route, timeout=timeout, **policy) for _ in range(TASKS))
                started = time.monotonic()
                deadlines.update(dict.fromkeys(keyed, time.time() + timeout))
                batch = await runner.launch(list(keyed.values()))
                done = await batch.wait()
                durations.append(time.monotonic() - started)
                await runner.close(batch)
                assert {str(r.task_id) for r in done} == set(keyed)
                results += done
                if rss is not None:
                    rss_after.append(rss_bytes(rss.pid))
    by_key = {str(r.task_id): r for r in results}
    name = route.split("?")[0]
    # The client hung up on, or was answered, every request the target got.
    wait_until(lambda: faults.open(name) == 0, timeout=2 * MARGIN, what=f"no open /{name} request")
    ran = Ran(by_key, durations, rss, rss_after, deadlines, faults.state())
    _report(name, setup.mode, ran, timeout)
    assert len(by_key) == batches * TASKS
    assert max(r.elapsed for r in results) <= timeout + MARGIN
    assert max(durations) <= timeout + grace + MARGIN
    hits = ran.seen["key_hits"]
    unseen = {
        key: (r.attempts, hits.get(key, 0), r.elapsed) for key, r in by_key.items() if hits.get(key) != r.attempts
    }
    assert not unseen, f"attempts and what the target saw differ, as (attempts, seen, elapsed): {unseen}"
    if rss_after:
        assert rss_after[-1] <= rss_after[0] * (1 + RSS_GROWTH), rss_after
    return ran


def _report(name: str, mode: str, ran: Ran, timeout: float) -> None:
    results = list(ran.results.values())
    figures: dict[str, Any] = {
        "scenario": "misbehaving_targets",
        "target": name,
        "mode": mode,
        "tasks": len(results),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "attempts": dict(Counter(r.attempts for r in results)),
        "timeout_s": timeout,
        "max_elapsed_s": round(max(r.elapsed for r in results), 3),
        "batch_s": [round(seconds, 3) for seconds in ran.seconds],
    }
    if ran.rss is not None:
        figures["worker_rss_mb"] = {
            "before": _mb(ran.rss.samples[0][1]),
            "after_each_batch": [_mb(value) for value in ran.rss_after],
            "peak": _mb(ran.rss.peak),
        }
    print("RELIABILITY " + json.dumps(figures))


def _mb(value: int) -> float:
    return round(value / 2**20, 1)


async def test_503_on_30_percent_of_responses_is_retried_then_answered_or_exhausted(
    setup: Setup, faults: FaultyTargets
) -> None:
    ran = await _run(setup, "flaky?p=0.3", timeout=10.0, faults=faults)

    assert set(Counter(r.outcome for r in ran.results.values())) <= {"response", "retries_exhausted"}
    for key, result in ran.results.items():
        served = ran.seen["served"][key]
        if result.response is not None:
            # Retried through every 503, and the first 200 is the result.
            assert result.response.status_code == 200
            assert served == [503] * (result.attempts - 1) + [200]
        else:
            assert result.error is not None and result.error.status_code == 503
            assert served == [503] * 4


async def test_random_latency_up_to_3_s_ends_in_a_response_or_a_timeout_at_the_deadline(
    setup: Setup, faults: FaultyTargets
) -> None:
    timeout = 2.0
    ran = await _run(setup, "latency?max=3", timeout=timeout, faults=faults)

    outcomes = Counter(r.outcome for r in ran.results.values())
    assert set(outcomes) == {"response", "timeout"}, outcomes
    for key, result in ran.results.items():
        # A response came before the task's deadline, a timeout cut one that would have come after.
        (answer,) = ran.seen["answers"][key]
        if result.response is not None:
            assert answer < ran.deadlines[key] + JITTER
        else:
            assert answer > ran.deadlines[key] - JITTER
        assert result.attempts == 1


async def test_a_connection_reset_mid_response_is_retried_then_ends_connect_error(
    setup: Setup, faults: FaultyTargets
) -> None:
    ran = await _run(setup, "reset", timeout=10.0, faults=faults)

    assert {(r.outcome, r.attempts) for r in ran.results.values()} == {("connect_error", 4)}


async def test_a_slowloris_target_trickling_its_headers_ends_timeout_at_the_deadline(
    setup: Setup, faults: FaultyTargets
) -> None:
    # A byte every 0.1 s never lets the headers end: the header timeout cuts the first attempt at
    # 1 s however busy the connection looks, and the deadline cuts the retry.
    policy = {"transport": TransportPolicy(response_header_timeout=1.0)}
    ran = await _run(setup, "slowloris?every=0.1", timeout=2.0, faults=faults, **policy)

    assert {r.outcome for r in ran.results.values()} == {"timeout"}
    assert {r.attempts for r in ran.results.values()} <= {1, 2}


async def test_a_target_that_never_answers_is_retried_per_attempt_then_ends_timeout_at_the_deadline(
    setup: Setup, faults: FaultyTargets
) -> None:
    policy = {"transport": TransportPolicy(response_header_timeout=0.5)}
    ran = await _run(setup, "silent", timeout=2.0, faults=faults, **policy)

    assert {r.outcome for r in ran.results.values()} == {"timeout"}
    # Each attempt waits 0.5 s for headers, then backs off and tries again while the deadline allows.
    assert {r.attempts for r in ran.results.values()} <= {2, 3, 4}


async def test_a_redirect_loop_returns_the_redirect_since_redirects_are_not_followed(
    setup: Setup, faults: FaultyTargets
) -> None:
    ran = await _run(setup, "redirect", timeout=10.0, faults=faults)

    for result in ran.results.values():
        assert result.response is not None and result.response.status_code == 302
        assert result.attempts == 1
        assert result.response.header("location") == f"/redirect?key={result.task_id}"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_ten_times_the_limit_ends_response_too_large(
    setup: Setup, framing: str, faults: FaultyTargets
) -> None:
    route = f"big?n={10 * LIMIT}" + ("&chunked=1" if framing == "chunked" else "")
    ran = await _run(setup, route, timeout=10.0, faults=faults)

    assert {(r.outcome, r.attempts) for r in ran.results.values()} == {("response_too_large", 1)}


def test_the_fault_worker_lived_through_every_scenario_without_an_error(fault_worker: FaultWorker) -> None:
    assert fault_worker.worker.process.poll() is None
    assert fault_worker.worker.get("/healthz")[0] == 200
    errors = [line for line in fault_worker.worker.log().splitlines() if '"level": "ERROR"' in line]
    assert not errors
    assert "Traceback" not in fault_worker.worker.log()
