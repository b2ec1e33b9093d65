"""Throughput of ``trs-worker`` draining a preloaded request topic, against local mode and against a worker with no
TRS code, on one loopback nginx.

One run starts nginx (its tiny ``/`` body) and the embedded broker (Tansu, in memory) once, then measures:

- ``worker1``: ``--tasks`` GET tasks are preloaded on a fresh request topic, then one ``python -m consumer``
  subprocess, started with real flags, drains them;
- ``bare``: the same with one ``python -m benchmarks.bare_worker`` subprocess instead, a worker with no TRS code
  that does only what a task's contract requires, with the worker's Kafka properties and the same result bytes
  (see that module): the floor of a Python worker's CPU per task on this machine, given as
  ``ratio_worker1_cpu_vs_bare``;
- ``worker2``: the same on another fresh request topic, with two worker subprocesses in one consumer group;
- ``instant`` (only when asked for with ``--runs``): one ``python -m benchmarks.instant_worker`` subprocess, the
  worker with a transport that answers at once, so its CPU per task is the worker's own, without the requests;
- ``local``: a child process runs the same number of tasks through ``TaskRunner(mode="local")``.

Every side uses the same transport (pyreqwest), the same event loop (uvloop when installed) and the same
concurrency: ``--max-inflight`` for each worker (the bare worker's ``--concurrency``), ``max_inflight`` for the
runner (``--concurrency``, 100).
Each worker run gets a fresh service (a request topic of ``DEFAULT_REQUEST_PARTITIONS`` partitions), a fresh
consumer group and a fresh batch whose reply topic is created the way a client creates it. Tasks are keyed by
task id, so they spread evenly over the partitions.

How a drain is timed. A worker's rate is ``tasks / (last - first)``, where ``first`` and ``last`` are the
timestamps of the first and the last result record on the reply topic. librdkafka stamps each record (its
CreateTime, in ms) when the worker calls ``produce``, so the window runs from the worker's first result to its
last, on the worker's own clock. It starts one task's latency (a few ms) after the first task is consumed, so
process start, the broker connection and the consumer group join (3 to 6 s on Tansu with
``session.timeout.ms=6000``) never count. With two workers the window runs from the earlier first result to the
later last one. The harness learns that a drain is over from the group's committed offsets, a broker-side
lookup that costs the workers nothing, then reads the reply topic and checks that every task has a 2xx
result. Nothing polls the workers while they drain.

The local rate is measured as in ``benchmarks.local_throughput``: in a fresh child process, a warm-up pass, then
measured rounds of ``--tasks`` tasks on one runner; each round's clock covers ``launch`` until the last result.
The worker side gets no warm-up, so the ratio leans, if anything, against the worker.

The bare worker is timed and measured exactly as ``worker1``. The machine is shared, so wall-clock rates are
noisy. A full run repeats the four runs ``--repeat`` times, interleaved, and reports the median drain and the
median local round; ``--quick`` runs each once. Each figure
also comes with CPU microseconds per task: of the worker processes and of their event-loop threads alone (the
bottleneck: the hot path runs there), of the broker and of nginx over the same span, and of the local child and
its event-loop thread. Those move far less with the machine's load than rates do. ``thread_cpu_us_per_task``
splits the workers' CPU by kind of thread (``main``, ``pyreqwest``'s runtime, librdkafka's ``rdk:*``, ``python``
for the fetchers and the other Python threads), which says where the CPU outside the event loop goes.

    python -m benchmarks.worker_throughput            # full run: 50,000 tasks, three times
    python -m benchmarks.worker_throughput --quick    # 10,000 tasks once: under a minute
    python -m benchmarks.worker_throughput --runs worker1 --profile /tmp/prof    # a py-spy flame graph per worker
    python -m benchmarks.worker_throughput --runs worker1 --profile /tmp/prof --profile-format raw \
        --profile-args "--gil --rate 400"                                         # only what holds the GIL

Profiling needs ``py-spy`` (``pip install py-spy``). The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, Message, Producer, TopicPartition

from benchmarks.bare_clients import loop_name, peak_rss_mib, run_on_loop
from benchmarks.nginx_target import nginx_target
from producer.dev.embedded_broker import EmbeddedBroker, free_port
from producer.topics import DEFAULT_REQUEST_PARTITIONS, TopicAdmin, TopicSpec
from shared.models import HttpRequest, Task, TaskEnvelope
from shared.wire import decode_result, encode_task, new_batch_id, reply_topic, request_topic

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = ("worker1", "bare", "worker2", "local")
#: Runs that are only made when ``--runs`` names them.
EXTRA_RUNS = ("instant",)
#: The module each kind of worker run starts; the bare worker takes flags of its own.
PROGRAMS = {"worker": "consumer", "bare": "benchmarks.bare_worker", "instant": "benchmarks.instant_worker"}
SERVICE_PREFIX = "wbench"
TRANSPORT = "pyreqwest"
#: Tansu forms a group in about half the session timeout; the integration tests use the same.
SESSION_TIMEOUT_MS = 6000
#: Per-task timeout. Tasks are preloaded before the workers start, so it covers the join and the whole drain.
TASK_TIMEOUT = 600.0
#: Partitions of each batch's reply topic.
REPLY_PARTITIONS = 1
#: Seconds between lookups of the group's committed offsets while a drain runs.
COMMIT_POLL_INTERVAL = 0.25
#: Wall-clock bound on one drain, join included, and on the local child.
DRAIN_TIMEOUT = 600.0
#: Seconds a worker gets to drain and exit after SIGTERM.
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    """How many tasks each run has, how often it repeats, and the local child's rounds."""

    tasks: int
    #: Each repetition drains once with one worker, once with a bare worker, once with two, then runs a local child.
    repeat: int
    #: Measured local rounds per child, after a warm-up pass of ``local_warmup`` tasks.
    local_rounds: int
    local_warmup: int


@dataclass(frozen=True)
class DrainReport:
    """One drain by ``workers`` worker processes."""

    workers: int
    tasks: int
    seconds: float
    tps: float
    #: Results per worker, in worker-name order: how the group shared the partitions.
    split: list[int]
    #: Results beyond one per task (at-least-once delivery allows them).
    duplicates: int
    #: Tasks whose result was not a 2xx response, and how many results had each other outcome.
    failed: int
    other_outcomes: dict[str, int]
    #: Seconds from starting the processes until every worker was ready (joined, with an assignment).
    join_seconds: float
    #: CPU time of the worker processes (every thread), and of their event-loop threads alone, per task,
    #: from readiness until the last commit. Steadier than wall-clock rates on a shared machine.
    cpu_us_per_task: float
    loop_cpu_us_per_task: float
    #: The broker's and nginx's CPU per task over the same span; they share the machine's cores with the workers.
    broker_cpu_us_per_task: float
    nginx_cpu_us_per_task: float
    #: The workers' CPU per task by kind of thread (see ``_thread_cpu``): where the CPU outside the loop goes.
    thread_cpu_us_per_task: dict[str, float]


@dataclass(frozen=True)
class LocalReport:
    loop: str
    tasks: int
    rounds_tps: list[float]
    tps: float
    failed: int
    peak_rss_mib: float
    #: CPU time of the process, and of its event-loop thread alone, per task, from launch to last result.
    cpu_us_per_task: float
    loop_cpu_us_per_task: float


def _plan(quick: bool, tasks: int | None, repeat: int | None) -> Plan:
    if quick:
        return Plan(tasks=tasks or 10_000, repeat=repeat or 1, local_rounds=3, local_warmup=2_000)
    return Plan(tasks=tasks or 50_000, repeat=repeat or 3, local_rounds=2, local_warmup=5_000)


# Local mode, in a child process -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRounds:
    """Measured local rounds: their rates, failures and CPU seconds (process, event-loop thread)."""

    rounds_tps: list[float]
    failed: int
    cpu_seconds: float
    loop_cpu_seconds: float


async def _local_rounds(url: str, plan: Plan, concurrency: int) -> LocalRounds:
    from producer import TaskRunner

    async with TaskRunner(
        mode="local", service_name=SERVICE_PREFIX, transport=TRANSPORT, max_inflight=concurrency
    ) as runner:

        async def one(count: int) -> LocalRounds:
            tasks = [
                Task(service_name=SERVICE_PREFIX, request=HttpRequest(url=url), timeout=TASK_TIMEOUT)
                for _ in range(count)
            ]
            # The clocks cover what a caller waits for, launch to last result; building the tasks doesn't count.
            started, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            batch = await runner.launch(tasks)
            results = await batch.wait()
            seconds = time.perf_counter() - started
            cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
            failed = sum(1 for r in results if r.response is None or not 200 <= r.response.status_code < 300)
            # Free the batch so the next round starts from the same heap.
            await runner.close(batch)
            return LocalRounds([count / seconds], failed, cpu, loop_cpu)

        await one(plan.local_warmup)
        rounds = [await one(plan.tasks) for _ in range(plan.local_rounds)]
    return LocalRounds(
        rounds_tps=[tps for r in rounds for tps in r.rounds_tps],
        failed=sum(r.failed for r in rounds),
        cpu_seconds=sum(r.cpu_seconds for r in rounds),
        loop_cpu_seconds=sum(r.loop_cpu_seconds for r in rounds),
    )


def run_local_child(url: str, plan: Plan, concurrency: int) -> LocalReport:
    rounds = run_on_loop(lambda: _local_rounds(url, plan, concurrency))
    tasks = plan.tasks * plan.local_rounds
    return LocalReport(
        loop=loop_name(),
        tasks=plan.tasks,
        rounds_tps=[round(x, 1) for x in rounds.rounds_tps],
        tps=round(statistics.median(rounds.rounds_tps), 1),
        failed=rounds.failed,
        peak_rss_mib=round(peak_rss_mib(), 1),
        cpu_us_per_task=round(rounds.cpu_seconds / tasks * 1e6, 1),
        loop_cpu_us_per_task=round(rounds.loop_cpu_seconds / tasks * 1e6, 1),
    )


def _spawn_local(url: str, plan: Plan, concurrency: int) -> LocalReport:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker_throughput",
        "--child",
        "local",
        "--url",
        url,
        "--tasks",
        str(plan.tasks),
        "--concurrency",
        str(concurrency),
        "--local-rounds",
        str(plan.local_rounds),
        "--local-warmup",
        str(plan.local_warmup),
    ]
    # stderr passes through, so the child's warnings show; stdout carries its one JSON line.
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), stdout=subprocess.PIPE, text=True, timeout=DRAIN_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"the local child exited with {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("the local child printed no report")
    return LocalReport(**json.loads(lines[-1]))


# Worker runs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """A fresh service and batch for one worker run."""

    request_topic: str
    reply_topic: str
    group_id: str


def _new_setup(admin: TopicAdmin, label: str) -> Setup:
    service = f"{SERVICE_PREFIX}-{label}-{uuid.uuid4().hex[:8]}"
    admin.init([service], partitions=DEFAULT_REQUEST_PARTITIONS)
    now = datetime.now(UTC)
    batch_id = new_batch_id(now, now + timedelta(seconds=TASK_TIMEOUT))
    reply = reply_topic(service, batch_id)
    admin.create(TopicSpec(reply, REPLY_PARTITIONS, timedelta(hours=1)))
    return Setup(request_topic(service), reply, f"{SERVICE_PREFIX}-{label}-{uuid.uuid4().hex[:8]}")


def _preload(bootstrap: str, setup: Setup, url: str, count: int) -> None:
    """Produce ``count`` GET tasks on the request topic, as a client would, and wait until the broker has them."""
    batch_id = setup.reply_topic.rsplit("-rcv-", 1)[1]
    deadline = datetime.now(UTC) + timedelta(seconds=TASK_TIMEOUT)
    template = Task(service_name=SERVICE_PREFIX, request=HttpRequest(url=url), timeout=TASK_TIMEOUT)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True, "compression.type": "lz4"}
    )
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            errors.append(error)

    try:
        for _ in range(count):
            task = template.model_copy(update={"id": uuid.uuid4()})
            envelope = TaskEnvelope(batch_id=batch_id, reply_topic=setup.reply_topic, deadline=deadline, task=task)
            value, headers = encode_task(envelope)
            while True:
                try:
                    producer.produce(
                        setup.request_topic, value=value, key=str(task.id), headers=headers, on_delivery=delivered
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        if producer.flush(60) != 0 or errors:
            raise RuntimeError(f"preloading failed: {errors[:3]}")
    finally:
        # Closed now, not at exit: a producer left open outlives the broker and logs its lost connection.
        producer.close()


class WorkerProcess:
    """One ``python -m consumer`` subprocess with real flags (or another of ``PROGRAMS``), logging to a file."""

    def __init__(
        self, bootstrap: str, setup: Setup, concurrency: int, log_path: Path, *, program: str = "worker"
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        flags: dict[str, object]
        if program == "bare":
            flags = {
                "bootstrap-servers": bootstrap,
                "group-id": setup.group_id,
                "topic": setup.request_topic,
                "port": self.port,
                "concurrency": concurrency,
                "session-timeout-ms": SESSION_TIMEOUT_MS,
            }
        else:
            flags = {
                "bootstrap-servers": bootstrap,
                "group-id": setup.group_id,
                "topics": setup.request_topic,
                "host": "127.0.0.1",
                "port": self.port,
                "max-inflight": concurrency,
                "transport": TRANSPORT,
                "session-timeout-ms": SESSION_TIMEOUT_MS,
                "log-format": "json",
            }
        command = [sys.executable, "-m", PROGRAMS[program]]
        for name, value in flags.items():
            command += [f"--{name}", str(value)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=_env(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"a worker exited with {self.process.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"a worker exited with {self.process.returncode}; see {self.log_path}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            self._log.close()


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stat(path: str) -> tuple[str, int, float]:
    """The command name, parent pid and user plus system CPU seconds in a ``/proc`` stat file."""
    text = Path(path).read_text()
    # The command name, in parentheses, may hold spaces; the numeric fields follow it.
    name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(frozen=True)
class Cpu:
    """CPU seconds used so far by the processes a drain involves."""

    workers: float
    #: The workers' main threads, which run their event loops.
    loops: float
    broker: float
    nginx: float
    #: The workers' threads by kind (their names without the numbers that tell instances apart).
    threads: dict[str, float]

    @classmethod
    def now(cls, workers: Sequence[WorkerProcess]) -> Cpu:
        pids = [w.process.pid for w in workers]
        # Tansu and nginx are this process's children; their command names say which is which.
        children: dict[str, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError):
                    name, parent, seconds = _proc_stat(f"{entry}/stat")
                    if parent == os.getpid():
                        kind = "broker" if name.startswith("tansu") else name
                        children[kind] = children.get(kind, 0.0) + seconds
        return cls(
            workers=sum(_proc_stat(f"/proc/{pid}/stat")[2] for pid in pids),
            loops=sum(_proc_stat(f"/proc/{pid}/task/{pid}/stat")[2] for pid in pids),
            broker=children.get("broker", 0.0),
            nginx=children.get("nginx", 0.0),
            threads=_thread_cpu(pids),
        )

    def __sub__(self, other: Cpu) -> Cpu:
        threads = {name: seconds - other.threads.get(name, 0.0) for name, seconds in self.threads.items()}
        return Cpu(
            self.workers - other.workers,
            self.loops - other.loops,
            self.broker - other.broker,
            self.nginx - other.nginx,
            threads,
        )


def _thread_cpu(pids: Sequence[int]) -> dict[str, float]:
    """CPU seconds of the threads of ``pids`` by kind: the main thread, ``rdk:broker``, ``trs-fetcher``..."""
    kinds: dict[str, float] = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                name, _, seconds = _proc_stat(f"{task}/stat")
                kind = "main" if task.name == str(pid) else re.sub(r"[-_]?\d+$", "", name)
                kinds[kind] = kinds.get(kind, 0.0) + seconds
    return kinds


@dataclass(frozen=True)
class Profile:
    """Where and how ``py-spy`` records each worker."""

    directory: Path
    format: str
    #: More ``py-spy record`` flags, e.g. ``--gil`` (only the thread holding the GIL) or ``--native``.
    extra: tuple[str, ...] = ()


@contextlib.contextmanager
def _profiled(workers: Sequence[WorkerProcess], profile: Profile | None, label: str) -> Iterator[None]:
    """``py-spy record`` on each worker while the block runs, when ``profile`` is given."""
    if profile is None:
        yield
        return
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    suffix = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[profile.format]
    spies = []
    for n, worker in enumerate(workers):
        output = profile.directory / f"{label}-{n}.{suffix}"
        command = [py_spy, "record", "--pid", str(worker.process.pid), "--threads", "--format", profile.format]
        command += [*profile.extra, "-o", str(output)]
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for spy in spies:
            # SIGINT makes py-spy write its flame graph and exit.
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)


def _committed_total(consumer: Consumer, topic: str) -> int:
    partitions = [TopicPartition(topic, p) for p in range(DEFAULT_REQUEST_PARTITIONS)]
    return sum(max(0, tp.offset) for tp in consumer.committed(partitions, timeout=10))


def _wait_for_commits(bootstrap: str, setup: Setup, workers: Sequence[WorkerProcess], count: int) -> None:
    """Return once the group has committed every preloaded offset: every result is then acknowledged."""
    # A consumer that never subscribes only looks offsets up; it never joins the workers' group.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": setup.group_id})
    deadline = time.monotonic() + DRAIN_TIMEOUT
    try:
        while _committed_total(consumer, setup.request_topic) < count:
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the drain did not finish within {DRAIN_TIMEOUT:g} s")
            time.sleep(COMMIT_POLL_INTERVAL)
    finally:
        consumer.close()


@dataclass(frozen=True)
class ResultRecord:
    task_id: str
    #: ``"200"`` for a response, else the error code.
    outcome: str
    worker: str
    produced_ms: int

    @property
    def ok(self) -> bool:
        return self.outcome.isdigit() and 200 <= int(self.outcome) < 300


def _read_results(bootstrap: str, topic: str) -> list[ResultRecord]:
    """Every result record on ``topic``, duplicates included, with the time its worker produced it."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"wbench-reader-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    partitions = [TopicPartition(topic, p, 0) for p in range(REPLY_PARTITIONS)]
    consumer.assign(partitions)
    total = sum(high - low for low, high in (consumer.get_watermark_offsets(p, timeout=10) for p in partitions))
    records: list[ResultRecord] = []
    deadline = time.monotonic() + 120
    try:
        while len(records) < total and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                kind, produced_ms = message.timestamp()
                if kind == TIMESTAMP_NOT_AVAILABLE:
                    raise RuntimeError("result records carry no timestamp")
                result = decode_result(message.value(), message.headers())
                response = result.result.response
                outcome = str(response.status_code) if response is not None else result.result.outcome
                records.append(ResultRecord(str(result.result.task_id), outcome, result.worker or "", produced_ms))
    finally:
        consumer.close()
    return records


def _drain_report(records: list[ResultRecord], workers: int, count: int, join_seconds: float, cpu: Cpu) -> DrainReport:
    first = min(r.produced_ms for r in records)
    last = max(r.produced_ms for r in records)
    seconds = max(last - first, 1) / 1000
    ok_tasks = {r.task_id for r in records if r.ok}
    per_worker = Counter(r.worker for r in records)
    return DrainReport(
        workers=workers,
        tasks=count,
        seconds=round(seconds, 3),
        tps=round(count / seconds, 1),
        split=[per_worker[name] for name in sorted(per_worker)],
        duplicates=len(records) - len({r.task_id for r in records}),
        failed=count - len(ok_tasks),
        other_outcomes=dict(Counter(r.outcome for r in records if not r.ok)),
        join_seconds=round(join_seconds, 2),
        cpu_us_per_task=round(cpu.workers / count * 1e6, 1),
        loop_cpu_us_per_task=round(cpu.loops / count * 1e6, 1),
        broker_cpu_us_per_task=round(cpu.broker / count * 1e6, 1),
        nginx_cpu_us_per_task=round(cpu.nginx / count * 1e6, 1),
        thread_cpu_us_per_task={
            name: round(seconds / count * 1e6, 1) for name, seconds in sorted(cpu.threads.items()) if seconds > 0
        },
    )


def run_workers(
    bootstrap: str,
    admin: TopicAdmin,
    url: str,
    plan: Plan,
    *,
    workers: int,
    concurrency: int,
    log_dir: Path,
    profile: Profile | None,
    program: str = "worker",
) -> DrainReport:
    """Preload a fresh request topic, drain it with ``workers`` processes of ``program`` (see ``PROGRAMS``), time it
    from the results."""
    label = f"worker{workers}" if program == "worker" else program
    setup = _new_setup(admin, label)
    label += f"-{uuid.uuid4().hex[:4]}"
    _preload(bootstrap, setup, url, plan.tasks)
    started = time.monotonic()
    # Started together, so they join the group in one rebalance.
    processes = [
        WorkerProcess(bootstrap, setup, concurrency, log_dir / f"{label}-{n}.log", program=program)
        for n in range(workers)
    ]
    try:
        with _profiled(processes, profile, label):
            pending = list(processes)
            while pending:
                pending = [p for p in pending if not p.ready()]
                time.sleep(0.05)
            join_seconds = time.monotonic() - started
            cpu_before = Cpu.now(processes)
            _wait_for_commits(bootstrap, setup, processes, plan.tasks)
            cpu = Cpu.now(processes) - cpu_before
    finally:
        codes = [p.stop() for p in processes]
    if any(codes):
        raise RuntimeError(f"workers exited with {codes}; logs in {log_dir}")
    records = _read_results(bootstrap, setup.reply_topic)
    admin.delete([setup.reply_topic, setup.request_topic])
    return _drain_report(records, workers, plan.tasks, join_seconds, cpu)


# The whole run ----------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def _thread_medians(reports: Sequence[DrainReport]) -> dict[str, float | None]:
    kinds = sorted({kind for report in reports for kind in report.thread_cpu_us_per_task})
    return {kind: _median([r.thread_cpu_us_per_task.get(kind, 0.0) for r in reports]) for kind in kinds}


def summarize(
    drains: dict[str, list[DrainReport]], local: list[LocalReport], *, plan: Plan, concurrency: int
) -> dict[str, Any]:
    """The figures: each rate is the median over the run's drains (workers) or rounds (local)."""
    worker1 = _median([d.tps for d in drains.get("worker1", [])])
    worker2 = _median([d.tps for d in drains.get("worker2", [])])
    bare = _median([d.tps for d in drains.get("bare", [])])
    local_tps = _median([tps for report in local for tps in report.rounds_tps])

    def cpu(pick: str) -> dict[str, float | None]:
        figures = {name: _median([getattr(d, pick) for d in reports]) for name, reports in drains.items()}
        if local and pick in ("cpu_us_per_task", "loop_cpu_us_per_task"):
            figures["local"] = _median([getattr(report, pick) for report in local])
        return figures

    cpu_us_per_task = cpu("cpu_us_per_task")
    return {
        "worker1_tps": worker1,
        "worker2_tps": worker2,
        "bare_tps": bare,
        "local_tps": local_tps,
        "ratio_worker1_vs_local": _ratio(worker1, local_tps),
        "ratio_worker2_vs_local": _ratio(worker2, local_tps),
        "ratio_worker2_vs_worker1": _ratio(worker2, worker1),
        "ratio_worker1_cpu_vs_bare": _ratio(cpu_us_per_task.get("worker1"), cpu_us_per_task.get("bare")),
        "instant_tps": _median([d.tps for d in drains.get("instant", [])]),
        "worker1_drains_tps": [d.tps for d in drains.get("worker1", [])],
        "worker2_drains_tps": [d.tps for d in drains.get("worker2", [])],
        "bare_drains_tps": [d.tps for d in drains.get("bare", [])],
        "local_rounds_tps": [tps for report in local for tps in report.rounds_tps],
        "worker2_split": [d.split for d in drains.get("worker2", [])],
        "cpu_us_per_task": cpu_us_per_task,
        "loop_cpu_us_per_task": cpu("loop_cpu_us_per_task"),
        "broker_cpu_us_per_task": cpu("broker_cpu_us_per_task"),
        "nginx_cpu_us_per_task": cpu("nginx_cpu_us_per_task"),
        "thread_cpu_us_per_task": {name: _thread_medians(reports) for name, reports in drains.items()},
        "join_seconds": {name: [d.join_seconds for d in reports] for name, reports in drains.items()},
        "tasks": plan.tasks,
        "repeat": plan.repeat,
        "concurrency": concurrency,
        "request_partitions": DEFAULT_REQUEST_PARTITIONS,
        "transport": TRANSPORT,
        "loop": loop_name(),
        "cpus": os.cpu_count(),
        "duplicates": sum(d.duplicates for reports in drains.values() for d in reports),
        "failed": sum(d.failed for reports in drains.values() for d in reports) + sum(r.failed for r in local),
    }


def _print_drain(run: str, drain: DrainReport, concurrency: int) -> None:
    print(
        f"{run:8s} {drain.tps:>9,.0f} tasks/s over {drain.seconds:.2f} s, {drain.tasks} GET, c={concurrency} each, "
        f"split {drain.split}, joined in {drain.join_seconds:.1f} s, duplicates {drain.duplicates}, "
        f"failed {drain.failed} {drain.other_outcomes or ''}; CPU us/task: workers {drain.cpu_us_per_task:.0f} "
        f"(loop threads {drain.loop_cpu_us_per_task:.0f}), broker {drain.broker_cpu_us_per_task:.0f}, "
        f"nginx {drain.nginx_cpu_us_per_task:.0f}",
        flush=True,
    )


def _print_local(local: LocalReport, concurrency: int) -> None:
    print(
        f"local    {local.tps:>9,.0f} tasks/s (median of {local.rounds_tps}), {local.tasks} GET, c={concurrency}, "
        f"{local.loop}, failed {local.failed}, peak RSS {local.peak_rss_mib:.0f} MiB; CPU us/task: "
        f"process {local.cpu_us_per_task:.0f} (loop thread {local.loop_cpu_us_per_task:.0f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="trs-worker drain throughput against local mode and a bare worker.")
    parser.add_argument("--quick", action="store_true", help="fewer tasks, no repeats: under a minute")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per run (default 50,000; 10,000 with --quick)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions of the runs (default 3; 1 with --quick)")
    parser.add_argument("--concurrency", type=int, default=100, help="max in flight, for each worker and for local")
    parser.add_argument(
        "--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS + EXTRA_RUNS)}"
    )
    parser.add_argument("--profile", type=Path, default=None, help="record each worker with py-spy into this directory")
    parser.add_argument("--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph")
    parser.add_argument("--profile-args", default="", help='more py-spy record flags, e.g. "--gil --native --rate 500"')
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs (kept anyway on failures)")
    # Child mode: measure local mode in this process and print its report.
    parser.add_argument("--child", choices=("local",), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--local-rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--local-warmup", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    plan = _plan(args.quick, args.tasks, args.repeat)

    if args.child == "local":
        plan = Plan(
            tasks=plan.tasks,
            repeat=1,
            local_rounds=args.local_rounds or plan.local_rounds,
            local_warmup=plan.local_warmup if args.local_warmup is None else args.local_warmup,
        )
        print(json.dumps(asdict(run_local_child(args.url, plan, args.concurrency))), flush=True)
        return

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS + EXTRA_RUNS))
    if unknown:
        parser.error(f"unknown runs: {', '.join(unknown)}")
    profile = None
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        profile = Profile(args.profile, args.profile_format, tuple(shlex.split(args.profile_args)))
    log_dir = Path(tempfile.mkdtemp(prefix="trs-wbench-"))
    drains: dict[str, list[DrainReport]] = {}
    local: list[LocalReport] = []
    started = time.perf_counter()
    with nginx_target() as bases, EmbeddedBroker() as broker:
        url = bases[0] + "/"
        bootstrap = broker.bootstrap_servers
        admin = TopicAdmin({"bootstrap.servers": bootstrap})
        admin.init()
        # Repetitions interleave the runs, so a burst of load from elsewhere on the machine hits them alike.
        for _ in range(plan.repeat):
            for run in runs:
                if run == "local":
                    local.append(_spawn_local(url, plan, args.concurrency))
                    _print_local(local[-1], args.concurrency)
                    continue
                drain = run_workers(
                    bootstrap,
                    admin,
                    url,
                    plan,
                    workers=int(run.removeprefix("worker")) if run.startswith("worker") else 1,
                    concurrency=args.concurrency,
                    log_dir=log_dir,
                    profile=profile,
                    program="worker" if run.startswith("worker") else run,
                )
                drains.setdefault(run, []).append(drain)
                _print_drain(run, drain, args.concurrency)
        admin.close()
    summary = summarize(drains, local, plan=plan, concurrency=args.concurrency)
    if args.keep_logs or summary["failed"] or summary["duplicates"]:
        print(f"worker logs in {log_dir}", flush=True)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.1f}s", flush=True)
    print(json.dumps(summary), flush=True)
    if summary["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
