"""TRS's own CPU per task: local mode over a transport that answers at once, against a bare loop over the same one.

The transport builds a fresh 200 response (three headers, a small body) for each request and returns it without
touching the network or yielding to the event loop, so what is left is TRS's own work: the batch, the local
backend's workers, the engine (deadline, retry decision, metrics) and the result. The bare loop sends the same
requests through the same transport one after another and keeps a ``(task id, response)`` pair per task, as a
caller that wants every answer must.

Both sides share one process and one prebuilt task list, and their rounds alternate (bare, TRS, bare, TRS...), each
from a collected heap, so a slow spell of this machine falls on both. The figure is CPU time (``time.process_time``),
not wall time, because other processes share the cores; it is the median round, per task. Every result is kept until
its round ends, so the garbage collector's work on them counts, as it would for a caller.

    python -m benchmarks.engine_overhead            # 100,000 tasks a round, 7 rounds a side
    python -m benchmarks.engine_overhead --quick    # 10,000 tasks, 5 rounds: a few seconds of CPU

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from benchmarks.bare_clients import loop_name, run_on_loop
from producer.batch import Batch
from producer.local import LocalBackend
from shared.engine import DEFAULT_MAX_RESPONSE_BYTES, Engine, TlsConfig, Transport
from shared.models import HttpRequest, HttpResponse, Task, TransportPolicy

SERVICE_NAME = "bench"
#: In flight at once in local mode: the runner's default.
MAX_INFLIGHT = 1000
TASK_TIMEOUT = 600.0
_HEADERS = (("Content-Type", "text/html"), ("Content-Length", "12"), ("Server", "instant"))
_BODY = b"<html></html>"


class InstantTransport(Transport):
    """Answers every request with a fresh 200 response, at once and without suspending."""

    enforces_timeout = True

    def __init__(self) -> None:
        self.sent = 0

    async def send(
        self, request: HttpRequest, *, user_agent: str | None, max_body_bytes: int, timeout: float
    ) -> HttpResponse:
        self.sent += 1
        return HttpResponse(200, _HEADERS, _BODY)

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class Plan:
    tasks: int
    rounds: int


async def _trs_round(transport: InstantTransport, tasks: list[Task]) -> tuple[float, int]:
    def factory(policy: TransportPolicy, tls: TlsConfig) -> Transport:
        return transport

    backend = LocalBackend(Engine(transport=factory), max_inflight=MAX_INFLIGHT)
    gc.collect()
    started = time.process_time()
    batch = Batch(tasks)
    await backend.start(batch)
    results = await batch.wait()
    seconds = time.process_time() - started
    ok = sum(1 for r in results if r.ok)
    await backend.close(batch)
    await backend.aclose()
    return seconds, ok


async def _bare_round(transport: InstantTransport, tasks: list[Task]) -> tuple[float, int]:
    gc.collect()
    started = time.process_time()
    results: list[tuple[uuid.UUID, HttpResponse]] = []
    for task in tasks:
        response = await transport.send(
            task.request, user_agent=None, max_body_bytes=DEFAULT_MAX_RESPONSE_BYTES, timeout=task.timeout
        )
        results.append((task.id, response))
    seconds = time.process_time() - started
    return seconds, sum(1 for _, r in results if r.status_code == 200)


async def _measure(plan: Plan) -> dict[str, list[float]]:
    tasks = [
        Task(service_name=SERVICE_NAME, request=HttpRequest(url=f"http://127.0.0.1/{n}"), timeout=TASK_TIMEOUT)
        for n in range(plan.tasks)
    ]
    transport = InstantTransport()
    sides: dict[str, Callable[[InstantTransport, list[Task]], Awaitable[tuple[float, int]]]] = {
        "bare": _bare_round,
        "trs": _trs_round,
    }
    # One unmeasured round a side: imports, code paths, the metrics' children.
    for side in sides.values():
        await side(transport, tasks[: min(len(tasks), 2000)])
    per_task: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(plan.rounds):
        for name, side in sides.items():
            seconds, ok = await side(transport, tasks)
            if ok != len(tasks):
                raise RuntimeError(f"{name}: {ok} of {len(tasks)} tasks got their response")
            per_task[name].append(seconds / len(tasks) * 1e6)
    return per_task


def main() -> None:
    parser = argparse.ArgumentParser(description="TRS's own CPU per task against a bare loop, no network.")
    parser.add_argument("--quick", action="store_true", help="fewer tasks and rounds: a few seconds")
    parser.add_argument("--tasks", type=int, help="tasks per round")
    parser.add_argument("--rounds", type=int, help="measured rounds per side")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    plan = Plan(tasks=10_000, rounds=5) if args.quick else Plan(tasks=100_000, rounds=7)
    plan = Plan(tasks=args.tasks or plan.tasks, rounds=args.rounds or plan.rounds)
    use_uvloop = not args.no_uvloop
    per_task = run_on_loop(lambda: _measure(plan), use_uvloop=use_uvloop)
    for name, figures in per_task.items():
        print(f"{name:5s} {statistics.median(figures):6.2f} us/task CPU (rounds: {[round(f, 2) for f in figures]})")
    trs, bare = statistics.median(per_task["trs"]), statistics.median(per_task["bare"])
    summary = {
        "trs_us_per_task": round(trs, 2),
        "bare_us_per_task": round(bare, 2),
        "trs_minus_bare_us": round(trs - bare, 2),
        "tasks": plan.tasks,
        "rounds": plan.rounds,
        "max_inflight": MAX_INFLIGHT,
        "loop": loop_name(use_uvloop=use_uvloop),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
