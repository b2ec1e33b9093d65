"""A hunt for native crashes on the reply path, in a process of its own so that a crash is a finding.

Run as ``python -m tests.reliability.reply_path_hunt --bootstrap ... --service ... --target ...``.
It runs ``--rounds`` rounds, one kind of round after another, on one long-lived runner:

* ``short``: a short batch to its end, then ``close``, whose delayed deletion races the next launch;
* ``cut``: a batch closed as soon as it is launched, so the cancel, the unassignment and the
  deletion race results still arriving;
* ``gc``: a batch whose reply topic ``trs topics gc`` deletes while it runs (its clock ahead of
  the client's), in a thread, while the next rounds go on;
* ``teardown``: a runner of its own, closed and cleaned up at once;
* ``left``: a batch left open, for the final cleanup to close and delete.

It prints one JSON line: the outcomes of each kind, the topics gc deleted, and every exception a
thread died of. A native crash ends the process with a signal instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from producer import Batch, ClientPolicy, HostPolicy, HttpRequest, Task, TaskRunner
from producer.topics import TopicAdmin
from shared.wire import reply_topic

KINDS = ("short", "cut", "gc", "teardown", "left")
#: Timeout of every task but the gc victims': their batches' names say they are live to the gc.
LIVE_TIMEOUT = 30.0
#: The gc victims: slow tasks that end ``no_result`` at this plus ``GRACE``.
VICTIM_TIMEOUT = 2.0
#: Tasks cut by their deadline on purpose count as timeouts: the default breaker would end later tasks
#: to the same target ``circuit_open``.
NO_BREAKER = ClientPolicy(host=HostPolicy(breaker=None))
GRACE = 0.5
#: How far ahead of the client's clock the gc's runs: past the victims' expiry, short of the others'.
GC_CLOCK_AHEAD = timedelta(seconds=15)
#: Seconds any one wait may take.
WAIT = 20.0


class Hunt:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.admin = TopicAdmin({"bootstrap.servers": options.bootstrap})
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.deleted: list[str] = []
        self.victims: list[str] = []
        self.thread_failures: list[str] = []
        self.background: list[asyncio.Task[None]] = []

    def task(self, path: str, timeout: float = LIVE_TIMEOUT) -> Task:
        url = f"{self.options.target}{path}"
        return Task(service_name=self.options.service, request=HttpRequest(url=url), timeout=timeout, policy=NO_BREAKER)

    def runner(self) -> TaskRunner:
        return TaskRunner(
            mode="remote",
            service_name=self.options.service,
            bootstrap_servers=self.options.bootstrap,
            result_grace=GRACE,
        )

    def count(self, kind: str, batch: Batch) -> None:
        self.outcomes[kind].update(r.outcome for r in batch.results)

    async def run(self) -> None:
        async with self.runner() as runner:
            for round_number in range(self.options.rounds):
                kind = KINDS[round_number % len(KINDS)]
                await getattr(self, kind)(runner)
            await asyncio.wait_for(asyncio.gather(*self.background), WAIT)

    async def short(self, runner: TaskRunner) -> None:
        batch = await runner.launch(runner.create_task_list(self.task("/ok"), 5))
        await asyncio.wait_for(batch.wait(), WAIT)
        self.count("short", batch)
        await runner.close(batch)

    async def cut(self, runner: TaskRunner) -> None:
        batch = await runner.launch(runner.create_task_list(self.task("/sleep?s=0.05"), 5))
        await runner.close(batch)
        self.count("cut", batch)

    async def gc(self, runner: TaskRunner) -> None:
        quick = self.task("/ok", VICTIM_TIMEOUT)
        slow = runner.create_task_list(self.task("/sleep?s=10", VICTIM_TIMEOUT), 3)
        batch = await runner.launch([quick, *slow])
        self.victims.append(reply_topic(self.options.service, batch.id))
        # The reader reads the topic once the quick task's result is in: then the deletion may come.
        await asyncio.wait_for(anext(aiter(batch)), WAIT)
        self.background.append(asyncio.create_task(self.collect_garbage()))
        self.background.append(asyncio.create_task(self.finish(runner, "gc", batch)))

    async def collect_garbage(self) -> None:
        ahead = datetime.now(UTC) + GC_CLOCK_AHEAD
        self.deleted += await asyncio.to_thread(self.admin.collect_garbage, timedelta(0), now=ahead)

    async def finish(self, runner: TaskRunner, kind: str, batch: Batch) -> None:
        await asyncio.wait_for(batch.wait(), WAIT)
        self.count(kind, batch)
        await runner.close(batch)

    async def teardown(self, runner: TaskRunner) -> None:
        own = self.runner()
        batch = await own.launch([self.task("/ok")])
        await own.close(batch)
        await asyncio.sleep(0)
        await own.cleanup()
        self.count("teardown", batch)

    async def left(self, runner: TaskRunner) -> None:
        batch = await runner.launch(runner.create_task_list(self.task("/ok"), 10))
        self.background.append(asyncio.create_task(self.count_when_done("left", batch)))

    async def count_when_done(self, kind: str, batch: Batch) -> None:
        await asyncio.wait_for(batch.wait(), WAIT)
        self.count(kind, batch)

    def report(self, seconds: float) -> dict[str, Any]:
        return {
            "outcomes": {kind: dict(counts) for kind, counts in self.outcomes.items()},
            "victims": self.victims,
            "deleted": sorted(set(self.deleted)),
            "thread_failures": self.thread_failures,
            "seconds": round(seconds, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--rounds", type=int, default=30)
    hunt = Hunt(parser.parse_args())

    def record(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        hunt.thread_failures.append(f"{name}: {args.exc_type.__name__}: {args.exc_value}")

    threading.excepthook = record
    started = time.monotonic()
    asyncio.run(hunt.run())
    hunt.admin.close()
    print(json.dumps(hunt.report(time.monotonic() - started)), flush=True)


if __name__ == "__main__":
    main()
