"""Remote-mode latency: launch to last result, for batches of 1, 10, 100 and 1,000 tasks.

One run starts loopback nginx (tiny ``/`` body, on 8 ``127.0.0.x`` addresses), the embedded
broker and two ``trs-worker`` processes (``producer.dev.cluster``), then one long-lived remote
``TaskRunner`` in this process, on uvloop, as a service would hold one. After a warm-up, it runs
batches of each size one after another and times each from ``launch`` to the last result. The
reply topic's deletion by ``close`` follows and is timed apart. ``topic_create_ms_p50`` is the
part of ``launch`` spent creating the reply topic, timed around ``TopicAdmin.create``.

It also runs 1,000-task batches keyed by target host instead of task id, against one host and
against eight, which is how the README's choice of the default key was measured.

librdkafka settings that decide these figures, and why they are what they are, are commented
where they are set: ``producer/remote.py`` (the client) and ``consumer/kafka_config.py`` (the
worker). The embedded broker answers a fetch only when ``fetch.wait.max.ms`` runs out, even
when data has arrived, so each hop costs about half that wait.

    python -m benchmarks.remote_latency            # full run
    python -m benchmarks.remote_latency --quick    # under a minute

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.bare_clients import loop_name, run_on_loop
from benchmarks.nginx_target import loopback_addresses, nginx_target, spread_urls
from producer import HttpRequest, Task, TaskRunner
from producer.dev.cluster import dev_cluster
from producer.remote import PartitionKey
from producer.shared_producer import close_shared_producers
from producer.topics import TopicAdmin, TopicSpec
from shared.settings import KafkaSettings

SERVICE = "latency"
SIZES = (1, 10, 100, 1000)
WORKERS = 2


@dataclass(frozen=True)
class Plan:
    rounds: dict[int, int]
    key_rounds: int
    warmup_batches: int


FULL = Plan(rounds={1: 300, 10: 150, 100: 60, 1000: 20}, key_rounds=10, warmup_batches=30)
QUICK = Plan(rounds={1: 60, 10: 30, 100: 10, 1000: 3}, key_rounds=2, warmup_batches=10)


@dataclass
class Timings:
    """Milliseconds per batch, by label."""

    batches: dict[str, list[float]] = field(default_factory=dict)
    closes: list[float] = field(default_factory=list)
    topic_creates: list[float] = field(default_factory=list)

    def add(self, label: str, ms: float) -> None:
        self.batches.setdefault(label, []).append(ms)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _time_topic_creation(timings: Timings) -> Callable[[], None]:
    """Time every reply-topic creation; returns the undo."""
    original = TopicAdmin.create

    def timed(self: TopicAdmin, spec: TopicSpec) -> None:
        started = time.perf_counter()
        try:
            original(self, spec)
        finally:
            timings.topic_creates.append((time.perf_counter() - started) * 1000)

    TopicAdmin.create = timed  # type: ignore[method-assign]

    def undo() -> None:
        TopicAdmin.create = original  # type: ignore[method-assign]

    return undo


async def _batch(runner: TaskRunner, urls: Sequence[str], timings: Timings, label: str | None) -> None:
    tasks = [Task(service_name=SERVICE, request=HttpRequest(url=url), timeout=60) for url in urls]
    started = time.perf_counter()
    batch = await runner.launch(tasks)
    results = [result async for result in batch]
    finished = time.perf_counter()
    await runner.close(batch)
    closed = time.perf_counter()
    failed = [r for r in results if r.response is None or r.response.status_code != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(results)} tasks failed, e.g. {failed[0]}")
    if label is not None:
        timings.add(label, (finished - started) * 1000)
        timings.closes.append((closed - finished) * 1000)


async def _measure(bootstrap: str, one_host: str, hosts: list[str], plan: Plan) -> Timings:
    timings = Timings()
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    async with TaskRunner(mode="remote", service_name=SERVICE, kafka=kafka, max_inflight=1000) as runner:
        for n in range(plan.warmup_batches):
            await _batch(runner, spread_urls(hosts, "/", 1 if n % 2 else 100), timings, None)
        undo = _time_topic_creation(timings)
        try:
            for size in SIZES:
                for _ in range(plan.rounds[size]):
                    await _batch(runner, spread_urls([one_host], "/", size), timings, str(size))
        finally:
            undo()
    for key in ("task", "host"):
        await _keyed_batches(kafka, key, one_host, hosts, plan, timings)
    return timings


async def _keyed_batches(
    kafka: KafkaSettings, key: PartitionKey, one_host: str, hosts: list[str], plan: Plan, timings: Timings
) -> None:
    async with TaskRunner(
        mode="remote", service_name=SERVICE, kafka=kafka, max_inflight=1000, partition_key=key
    ) as runner:
        await _batch(runner, spread_urls(hosts, "/", 100), timings, None)
        for targets, name in (([one_host], "1"), (hosts, str(len(hosts)))):
            for _ in range(plan.key_rounds):
                await _batch(runner, spread_urls(targets, "/", 1000), timings, f"1000_key_{key}_{name}_hosts")


def summarize(timings: Timings, plan: Plan) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for size in SIZES:
        values = timings.batches[str(size)]
        figures[f"p50_ms_{size}"] = round(statistics.median(values), 2)
        figures[f"p99_ms_{size}"] = round(_percentile(values, 0.99), 2)
    figures["topic_create_ms_p50"] = round(statistics.median(timings.topic_creates), 3)
    figures["topic_create_ms_p99"] = round(_percentile(timings.topic_creates, 0.99), 3)
    figures["close_ms_p50"] = round(statistics.median(timings.closes), 2)
    for label, values in timings.batches.items():
        if label.startswith("1000_key_"):
            figures[f"p50_ms_{label}"] = round(statistics.median(values), 2)
    figures["rounds"] = plan.rounds
    figures["workers"] = WORKERS
    figures["loop"] = loop_name(use_uvloop=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description="TRS remote mode: launch-to-last-result latency by batch size.")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: finishes in under a minute")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    with (
        nginx_target(addresses=loopback_addresses(8)) as bases,
        dev_cluster(workers=WORKERS, services=[SERVICE]) as cluster,
    ):
        print(f"nginx on {len(bases)} addresses, broker at {cluster.bootstrap_servers}, {WORKERS} workers", flush=True)
        timings = run_on_loop(lambda: _measure(cluster.bootstrap_servers, bases[0], bases, plan))
        # The runners share the process's producers; close them while the broker is still up.
        close_shared_producers()
    figures = summarize(timings, plan)
    for size in SIZES:
        print(
            f"{size:>5} tasks: p50 {figures[f'p50_ms_{size}']:8.2f} ms, p99 {figures[f'p99_ms_{size}']:8.2f} ms "
            f"over {plan.rounds[size]} batches",
            flush=True,
        )
    print(f"total {time.perf_counter() - started:.1f}s", flush=True)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
