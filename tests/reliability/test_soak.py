"""Soak: 200,000 tasks through one worker, its resident memory sampled every second.

The tasks go in batches, two at a time, from one remote runner to one worker against a loopback
nginx (the cheapest target there is, so that the worker's share of the machine is what counts).
After a warm-up (the first fifth of the tasks) the rest of the run is cut in two halves by time,
and the worker's peak RSS in the second half must be less than 10% above its peak in the first.
Peaks, not single readings: the worker's RSS swings from one reading to the next as its
allocators take memory and give it back (between 152 and 164 MB, up and down, over 420,000 tasks
in one run here), while a leak raises every later peak. A per-task leak of 200 bytes adds 16 MB,
over 10%, between the halves' peaks. The figures (the RSS series summarised, and tasks per
second) go to stdout as one ``RELIABILITY {json}`` line.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.nginx_target import nginx_target
from producer import HttpRequest, Task, TaskRunner
from producer.topics import TopicAdmin
from tests.integration.conftest import new_service
from tests.process_memory import RssSampler
from tests.tools import require_tool
from tests.worker_process import running_workers

pytestmark = [pytest.mark.integration, pytest.mark.alone]

TASKS = 200_000
BATCHES = 10
#: The share of the tasks after which the worker's memory counts as warmed up.
WARM_UP = 0.2
#: How much the worker's peak RSS in the second half after the warm-up may pass its peak in the first.
GROWTH = 0.10
SAMPLE_INTERVAL = 1.0


#: Bounded by its count, not its time: on a busy 2-core machine the worker gets a fraction of a core.
@pytest.mark.timeout(900)
def test_200000_tasks_through_one_worker_leave_its_rss_flat(
    kafka_bootstrap: str, admin: TopicAdmin, tmp_path: Path
) -> None:
    nginx = require_tool("nginx", "nginx")
    service = new_service(admin)
    with (
        nginx_target(nginx_binary=nginx) as (base,),
        running_workers(
            kafka_bootstrap, tmp_path, group_id=f"workers-{uuid.uuid4().hex[:8]}", topics=[service.request_topic]
        ) as (worker,),
        RssSampler(worker.process.pid, SAMPLE_INTERVAL) as rss,
    ):
        started = time.monotonic()
        outcomes, finished = asyncio.run(_soak(kafka_bootstrap, service.name, f"{base}/"))
        seconds = time.monotonic() - started
        alive = worker.process.poll() is None

    warmed_at = finished[int(BATCHES * WARM_UP) - 1] - started
    halfway = (warmed_at + rss.samples[-1][0]) / 2
    first_half = max(value for at, value in rss.samples if warmed_at <= at < halfway)
    second_half = max(value for at, value in rss.samples if at >= halfway)
    end = rss.samples[-1][1]
    figures = {
        "scenario": "soak",
        "tasks": TASKS,
        "batches": BATCHES,
        "outcomes": dict(outcomes),
        "seconds": round(seconds, 1),
        "tasks_per_s": round(TASKS / seconds),
        "rss_samples": len(rss.samples),
        "worker_rss_mb": {
            "start": _mb(rss.samples[0][1]),
            "peak": _mb(rss.peak),
            "peak_first_half": _mb(first_half),
            "peak_second_half": _mb(second_half),
            "end": _mb(end),
        },
        "peak_growth": round(second_half / first_half - 1, 4),
    }
    print("RELIABILITY " + json.dumps(figures))

    assert outcomes == Counter({"response": TASKS})
    assert alive
    assert second_half < first_half * (1 + GROWTH), figures


async def _soak(bootstrap: str, service: str, url: str) -> tuple[Counter[str], list[float]]:
    """Run the batches, two at a time so the worker never waits for the next; every outcome, and
    when each batch finished, in order."""
    outcomes: Counter[str] = Counter()
    finished: list[float] = []
    per_batch = TASKS // BATCHES
    in_step = asyncio.Semaphore(2)
    async with TaskRunner(
        mode="remote", service_name=service, bootstrap_servers=bootstrap, max_inflight=2 * per_batch
    ) as runner:
        template = Task(service_name=service, request=HttpRequest(url=url), timeout=600)

        async def one_batch() -> None:
            async with in_step:
                batch = await runner.launch(runner.create_task_list(template, per_batch))
                outcomes.update(result.outcome for result in await batch.wait())
                await runner.close(batch)
                finished.append(time.monotonic())

        await asyncio.gather(*(one_batch() for _ in range(BATCHES)))
    return outcomes, finished


def _mb(value: int) -> float:
    return round(value / 2**20, 1)
