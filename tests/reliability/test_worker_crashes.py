"""Worker crashes: ``kill -9`` of a random one of three workers, three times, during a 5,000-task batch.

The target counts the requests of each task. An outside Kafka client (kafka-python) reads where
each task's record landed, the group's committed offsets right after each kill (before the dead
member's partitions move on), and the committed offsets every few tens of milliseconds all along.
A task that ran twice must have been at or above its partition's committed offset when that
partition changed hands: work that its worker had started and not yet committed when it died (or,
rarely, when a rebalance moved the partition off a live worker). The figures go to stdout as one
``RELIABILITY {json}`` line; the README's Reliability section quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import os
import random
import re
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition

from producer import HttpRequest, Task, TaskResult, TaskRunner
from producer.topics import TopicAdmin
from shared.wire import decode_result, reply_topic
from tests.http_target import HttpTarget
from tests.integration.conftest import Service, new_service
from tests.waiting import wait_until
from tests.worker_process import WorkerProcess, running_workers

pytestmark = pytest.mark.integration

TASKS = 5000
WORKERS = 3
KILLS = 3
PARTITIONS = 6
#: Each task holds its worker this long and each worker runs this many at once, so the batch
#: lasts long enough for three kills and the group's recovery from each.
TASK_SECONDS = 0.1
WORKER_INFLIGHT = 10
#: The worker's default, so the window measured is the one a deployment has.
COMMIT_INTERVAL = 0.5
#: Each kill comes once the client holds a random number of results in this range, and after the
#: group has recovered from the kill before.
KILL_AFTER_RESULTS = (200, 2000)
TASK_TIMEOUT = 180.0
#: Seconds between two readings of the group's committed offsets.
SAMPLE_INTERVAL = 0.05

_PARTITION_EVENT = re.compile(r"\b(assigned|revoked|lost) ((?:[\w.-]+\[\d+\](?:, )?)+)")
_PARTITION = re.compile(r"([\w.-]+)\[(\d+)\]")


@dataclass(frozen=True)
class Kill:
    """One ``kill -9``: whom, when (epoch seconds), what it held and the group's commits right after."""

    victim: str
    at: float
    held: frozenset[int]
    committed: dict[int, int]


@dataclass(frozen=True)
class Handover:
    """A partition leaving its worker, by a kill or a revoke, for the next owner.

    ``committed`` is the group's commit when the next owner got the partition, where it resumed:
    the last reading of the commits over before then, since the next owner's own first commit can
    come within a few tenths of a second. A dead worker's last commits may still land after its
    death, so it can be above the reading taken at the kill.
    """

    partition: int
    at: float
    resumed_at: float
    committed: int
    kill: Kill | None


def partition_events(log: str, topic: str) -> Iterator[tuple[float, str, set[int]]]:
    """``(epoch seconds, assigned|revoked|lost, partitions of topic)`` from a worker's JSON log."""
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        found = _PARTITION_EVENT.search(entry.get("message", ""))
        if found is None:
            continue
        partitions = {int(p) for t, p in _PARTITION.findall(found.group(2)) if t == topic}
        yield datetime.fromisoformat(entry["timestamp"]).timestamp(), found.group(1), partitions


def held_partitions(log: str, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker holds, replaying its log's assign, revoke and lost lines."""
    held: set[int] = set()
    for _, event, partitions in partition_events(log, topic):
        held = held | partitions if event == "assigned" else held - partitions
    return held


class CommitSampler:
    """The group's committed offsets, read by an outside client every ``SAMPLE_INTERVAL``, with the time."""

    def __init__(self, bootstrap: str, group_id: str, topic: str) -> None:
        self._read = functools.partial(committed_offsets, bootstrap, group_id, topic)
        self.samples: list[tuple[float, dict[int, int]]] = []
        #: When each reading was over: one reads six partitions, which takes a while on a loaded machine.
        self.read_by: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-sampler", daemon=True)

    def __enter__(self) -> CommitSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with self._read() as read:
            while not self._stop.wait(SAMPLE_INTERVAL):
                started = time.time()
                offsets = read()
                self.samples.append((started, offsets))
                self.read_by.append(time.time())

    def before(self, at: float) -> dict[int, int] | None:
        """The last reading that was over by ``at``."""
        over = [offsets for (_, offsets), end in zip(self.samples, self.read_by, strict=True) if end < at]
        return over[-1] if over else None

    def passed(self, partition: int, offset: int) -> float | None:
        """When the commit of ``partition`` was first seen past ``offset``."""
        return next((when for when, offsets in self.samples if offsets[partition] > offset), None)

    def moved_back(self) -> list[tuple[int, int, int]]:
        """``(partition, from, to)`` wherever a committed offset went down between readings."""
        backwards = []
        for (_, before), (_, after) in zip(self.samples, self.samples[1:], strict=False):
            backwards += [(p, before[p], after[p]) for p in before if after[p] < before[p]]
        return backwards


@contextlib.contextmanager
def committed_offsets(bootstrap: str, group_id: str, topic: str) -> Iterator[Callable[[], dict[int, int]]]:
    """A reader of the group's committed offset of each partition (-1 where none), on its own client."""
    with outside_consumer(bootstrap, group_id) as consumer:

        def read() -> dict[int, int]:
            offsets = {p: consumer.committed(KafkaTopicPartition(topic, p)) for p in range(PARTITIONS)}
            return {p: -1 if offset is None else offset for p, offset in offsets.items()}

        yield read


@contextlib.contextmanager
def outside_consumer(bootstrap: str, group_id: str | None = None) -> Iterator[KafkaConsumer]:
    """A kafka-python consumer, a Kafka client independent of TRS's librdkafka; it never joins the group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    try:
        yield consumer
    finally:
        consumer.close()


def read_topic(bootstrap: str, topic: str, until: Callable[[list[Any]], bool], timeout: float = 60.0) -> list[Any]:
    """The records of ``topic`` from the start, once ``until(records)`` holds and a poll finds nothing more."""
    with outside_consumer(bootstrap) as consumer:
        consumer.assign([KafkaTopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()])
        consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"read {len(records)} records of {topic}, wanted more"
            polled = [r for batch in consumer.poll(timeout_ms=500, max_records=5000).values() for r in batch]
            if not polled and until(records):
                return records
            records += polled


def task_hits(target: HttpTarget, task_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many requests the target served for each task, over one kept-alive connection."""
    address = urlsplit(target.http)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    hits = {}
    try:
        for task_id in task_ids:
            connection.request("GET", f"/hits/{task_id}")
            hits[task_id] = int(connection.getresponse().read())
    finally:
        connection.close()
    return hits


@dataclass
class Fleet:
    """Three workers of one group; a killed one is restarted in its place, with a log per life."""

    bootstrap: str
    log_dir: Path
    group_id: str
    topic: str
    workers: list[WorkerProcess]
    lives: Counter[int] = field(default_factory=Counter)
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs = [w.log_path for w in self.workers]

    def held(self, worker: WorkerProcess) -> set[int]:
        return held_partitions(worker.log(), self.topic)

    def all_held(self) -> bool:
        return set().union(*(self.held(w) for w in self.workers)) == set(range(PARTITIONS))

    def restart(self, slot: int) -> WorkerProcess:
        self.lives[slot] += 1
        worker = WorkerProcess(
            self.bootstrap,
            self.log_dir / f"worker-{slot}-life-{self.lives[slot]}.log",
            group_id=self.group_id,
            topics=[self.topic],
            max_inflight=WORKER_INFLIGHT,
            commit_interval=COMMIT_INTERVAL,
        )
        self.workers[slot] = worker
        self.logs.append(worker.log_path)
        return worker

    def crash(self, rng: random.Random, progress: Callable[[], int]) -> list[Kill]:
        """Kill a random worker at each of ``KILLS`` random points of the batch, restarting it each time."""
        points = sorted(rng.sample(range(*KILL_AFTER_RESULTS), KILLS))
        kills = []
        with committed_offsets(self.bootstrap, self.group_id, self.topic) as committed:
            committed()
            for point in points:
                wait_until(functools.partial(_reached, progress, point), timeout=120, what=f"{point} results")
                slot = rng.randrange(len(self.workers))
                victim = self.workers[slot]
                held = frozenset(self.held(victim))
                victim.kill()
                at = time.time()
                kills.append(Kill(f"{socket.gethostname()}-{victim.process.pid}", at, held, committed()))
                victim.close()
                self.restart(slot).wait_ready()
                wait_until(self.all_held, timeout=60, what="every partition assigned again")
        return kills

    def events(self) -> list[tuple[float, str, int]]:
        """``(epoch seconds, assigned|revoked|lost, partition)`` from every worker's logs, in time order."""
        return sorted(
            (at, event, p)
            for path in self.logs
            for at, event, partitions in partition_events(path.read_text(errors="replace"), self.topic)
            for p in partitions
        )


def _reached(progress: Callable[[], int], point: int) -> bool:
    return progress() >= point


def test_kill_9_of_random_workers_mid_batch_loses_nothing_and_repeats_only_uncommitted_work(
    kafka_bootstrap: str, admin: TopicAdmin, target: HttpTarget, tmp_path: Path
) -> None:
    service = new_service(admin, partitions=PARTITIONS)
    topic = service.request_topic
    group_id = f"workers-{uuid.uuid4().hex[:8]}"
    # A run's seed (printed with its figures) replays its kills: which worker, after how many results.
    seed = int(os.environ.get("TRS_RELIABILITY_SEED") or random.randrange(2**32))
    ids = [uuid.uuid4() for _ in range(TASKS)]
    tasks = [
        Task(
            id=task_id,
            service_name=service.name,
            request=HttpRequest(url=f"{target.http}/sleep?s={TASK_SECONDS}&key={task_id}"),
            timeout=TASK_TIMEOUT,
        )
        for task_id in ids
    ]

    with (
        running_workers(
            kafka_bootstrap,
            tmp_path,
            WORKERS,
            group_id=group_id,
            topics=[topic],
            max_inflight=WORKER_INFLIGHT,
            commit_interval=COMMIT_INTERVAL,
        ) as workers,
        CommitSampler(kafka_bootstrap, group_id, topic) as sampler,
    ):
        fleet = Fleet(kafka_bootstrap, tmp_path, group_id, topic, workers)

        def settle(batch_id: str) -> _Settled:
            records = read_topic(kafka_bootstrap, topic, lambda records: len(records) == TASKS)
            placed = {uuid.UUID(r.key.decode()): (r.partition, r.offset) for r in records}
            ends = dict(Counter(partition for partition, _ in placed.values()))
            # Re-runs of tasks whose first result the client already has may still be going: they
            # are over once every partition is committed to its end.
            wait_until(lambda: sampler.samples[-1][1] == ends, timeout=60, what="the commits to reach the end")
            hits = task_hits(target, ids)
            replies = read_topic(
                kafka_bootstrap,
                reply_topic(service.name, batch_id),
                lambda records: len({r.key for r in records}) == TASKS,
            )
            return placed, hits, replies

        started, started_wall = time.monotonic(), time.time()
        results, client_duplicates, kills, (placed, hits, replies) = asyncio.run(
            _run_batch(kafka_bootstrap, service, tasks, fleet, random.Random(seed), settle)
        )
        seconds = time.monotonic() - started
        workers_alive = all(w.process.poll() is None for w in fleet.workers)
        events = fleet.events()

    departures: list[tuple[float, int, Kill | None]] = [(kill.at, p, kill) for kill in kills for p in kill.held]
    departures += [(at, p, None) for at, event, p in events if event != "assigned"]
    handovers = []
    for at, p, kill in departures:
        resumed_at = next((when for when, event, q in events if q == p and event == "assigned" and when > at), None)
        resumed = None if resumed_at is None else sampler.before(resumed_at)
        if resumed_at is not None and resumed is not None:
            handovers.append(Handover(p, at, resumed_at, resumed[p], kill))
    ran = _results_by_task(replies)
    repeats = {t: n for t, n in hits.items() if n > 1}
    causes = {t: _cause(placed[t], ran[t], handovers) for t in repeats}
    unexplained = {t: (placed[t], ran[t]) for t, cause in causes.items() if cause is None}
    finished = [_finished_uncommitted([h for h in handovers if h.kill is kill], placed, ran) for kill in kills]
    victims = {kill.victim: kill.at for kill in kills}
    # How long each finished task stayed uncommitted: from its first result to the commit past it.
    windows: dict[uuid.UUID, float] = {}
    steady: list[float] = []
    for t, (p, o) in placed.items():
        passed = sampler.passed(p, o)
        if passed is None:
            continue
        first_sender, first = min(ran[t], key=lambda sent: sent[1])
        windows[t] = passed - first
        if victims.get(first_sender, passed + 1) > passed:
            # Committed by the worker that finished it, not after its death by the next owner.
            steady.append(passed - first)
    repeated_runs = sum(n - 1 for n in hits.values())
    after_revoke = sum(hits[t] - 1 for t, c in causes.items() if c is not None and c.kill is None)
    last_result = max(min(when for _, when in sent) for sent in ran.values())
    figures = {
        "scenario": "worker_crashes",
        "seed": seed,
        "tasks": TASKS,
        "workers": WORKERS,
        "kills": len(kills),
        "results": len(results),
        "lost": TASKS - len({r.task_id for r in results}),
        "outcomes": dict(Counter(r.outcome for r in results)),
        "ran_twice": len(repeats),
        "ran_three_times_or_more": sum(n > 2 for n in repeats.values()),
        "client_duplicates": client_duplicates,
        "repeated_runs": repeated_runs,
        "per_kill": [
            {
                "at_s": round(kill.at - started_wall, 1),
                "held": sorted(kill.held),
                "committed_at_kill": {p: kill.committed[p] for p in sorted(kill.held)},
                "resumed_from": {h.partition: h.committed for h in handovers if h.kill is kill},
                "recovery_s": round(max((h.resumed_at - kill.at for h in handovers if h.kill is kill), default=0), 1),
                "finished_uncommitted": len(done),
                "oldest_finished_uncommitted_s": round(kill.at - min(done.values(), default=kill.at), 3),
            }
            for kill, done in zip(kills, finished, strict=True)
        ],
        "repeated_in_flight_at_kills": repeated_runs - sum(len(done) for done in finished) - after_revoke,
        "repeated_after_live_revoke": after_revoke,
        "commit_interval_s": COMMIT_INTERVAL,
        "worker_max_inflight": WORKER_INFLIGHT,
        "uncommitted_s": _quantiles(list(windows.values())),
        "uncommitted_by_its_own_worker_s": _quantiles(steady),
        "last_result_s": round(last_result - started_wall, 1),
        "seconds": round(seconds, 1),
    }
    print("RELIABILITY " + json.dumps(figures))

    assert len(kills) == KILLS
    # Every kill came while the batch ran: before the last task's first result.
    assert max(kill.at for kill in kills) < last_result
    assert len(results) == TASKS
    assert {r.task_id for r in results} == set(ids)
    assert all(r.ok for r in results), figures["outcomes"]
    assert set(hits) == set(ids) and min(hits.values()) >= 1
    # Every repeat was at or above its partition's commit when the partition changed hands, and
    # ran again after that.
    assert not unexplained, (unexplained, kills)
    # What a victim had finished above the commit ran again: its next owner started at the commit.
    assert all(hits[t] > 1 for done in finished for t in done)
    assert not sampler.moved_back()
    assert len(windows) == TASKS
    assert workers_alive


#: Where each task's record is, how often the target ran it, and every result record.
_Settled = tuple[dict[uuid.UUID, tuple[int, int]], dict[uuid.UUID, int], list[Any]]


async def _run_batch(
    bootstrap: str,
    service: Service,
    tasks: list[Task],
    fleet: Fleet,
    rng: random.Random,
    settle: Callable[[str], _Settled],
) -> tuple[list[TaskResult], int, list[Kill], _Settled]:
    """Run the batch while the fleet crashes: every result, the client's duplicates, the kills, and
    what ``settle`` finds before the batch's reply topic is deleted."""
    results: list[TaskResult] = []
    async with TaskRunner(
        mode="remote", service_name=service.name, bootstrap_servers=bootstrap, max_inflight=len(tasks)
    ) as runner:
        batch = await runner.launch(tasks)

        async def collect() -> None:
            async for result in batch:
                results.append(result)

        collecting = asyncio.create_task(collect())
        crashing = asyncio.create_task(asyncio.to_thread(fleet.crash, rng, lambda: len(results)))
        done, _ = await asyncio.wait({collecting, crashing}, return_when=asyncio.FIRST_EXCEPTION)
        if crashing in done and (failure := crashing.exception()) is not None:
            collecting.cancel()
            raise failure
        kills = await crashing
        await collecting
        settled = await asyncio.to_thread(settle, batch.id)
        duplicates = batch.duplicates
        await runner.close(batch)
    return results, duplicates, kills, settled


def _results_by_task(replies: list[Any]) -> dict[uuid.UUID, list[tuple[str, float]]]:
    """Each task's results: the worker that sent it and when it reached the reply topic (epoch seconds)."""
    ran: dict[uuid.UUID, list[tuple[str, float]]] = {}
    for record in replies:
        envelope = decode_result(record.value, record.headers)
        ran.setdefault(envelope.result.task_id, []).append((envelope.worker or "", record.timestamp / 1000))
    return ran


def _cause(place: tuple[int, int], results: list[tuple[str, float]], handovers: list[Handover]) -> Handover | None:
    """The handover that made a task run again: its partition's, at or below its offset, before its
    last result. The kill of a worker that sent one of its results comes first."""
    partition, offset = place
    last = max(when for _, when in results)
    fits = [h for h in handovers if h.partition == partition and h.committed <= offset and h.at < last]
    senders = {worker for worker, _ in results}
    return next(
        (h for h in fits if h.kill is not None and h.kill.victim in senders),
        max(fits, key=lambda h: h.at, default=None),
    )


def _finished_uncommitted(
    handovers: list[Handover], placed: dict[uuid.UUID, tuple[int, int]], ran: dict[uuid.UUID, list[tuple[str, float]]]
) -> dict[uuid.UUID, float]:
    """The tasks a kill's victim had finished (its result was in) at or above where the next owner
    resumed, each with when it finished."""
    finished = {}
    for t, results in ran.items():
        partition, offset = placed[t]
        for handover in handovers:
            if handover.partition != partition or offset < handover.committed or handover.kill is None:
                continue
            sent = [when for worker, when in results if worker == handover.kill.victim and when < handover.at]
            if sent:
                finished[t] = min(sent)
    return finished


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {}
    cuts = statistics.quantiles(values, n=100)
    return {"p50": round(cuts[49], 3), "p99": round(cuts[98], 3), "max": round(max(values), 3)}
