"""One big batch of slow requests through TRS local mode, against bare pyreqwest loops on the same workload.

nginx answers ``/sleep`` after 2 s (echo module, no Python on the server side), on several 127.0.0.x addresses.
TRS runs 100,000 GET tasks as one batch with at most 16,000 in flight (``TaskRunner(max_inflight=16000)``); the
best it can do is ``tasks / cap * 2 s`` = 12.5 s. The bare pyreqwest loop (``benchmarks.bare_clients``) runs the
same URLs with the same cap, and so does the contract loop (``bare_clients.contract_fetcher``), which does what TRS's
contract asks of a request (a streamed, size-capped read, a per-request timeout, status, headers and body kept until
the end): ``ratio_vs_same_contract`` is what TRS's own code costs, ``ratio_vs_bare`` what TRS costs in all. Each runs
in its own subprocess, so peak RSS is per run and none inherits another's heap, runtime threads or sockets.

``seconds`` runs from ``launch`` to the last result. Building the 100,000 Task objects happens before that and is
reported as ``build_seconds``: a caller pays it too, but it is CPU work of the caller's, not the engine's. Building
ends with a full garbage collection, so the collection that CPython defers until the heap has grown by a quarter is
charged to building rather than brought forward into the clock (see ``benchmarks.local_throughput``); the bare loop
starts from a collected heap too. The bare loops' time includes building and closing their client, which is small
next to the run.

This machine's speed drifts by a third from minute to minute, and one run of each side moved ``ratio_vs_bare``
between 1.04 and 1.20 within an hour. So a full run repeats the sequence (``--repeat``, default 3), the three
taking turns, and each one's figure is the median over its processes; its peak RSS is the highest.

    python -m benchmarks.local_concurrency            # 100,000 tasks, cap 16,000, each run 3 times
    python -m benchmarks.local_concurrency --quick    # 20,000 tasks, cap 3,200, TRS and bare once: the same ideal,
                                                      # under a minute

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.bare_clients import (
    FD_HEADROOM,
    Kept,
    bare_pyreqwest,
    contract_fetcher,
    loop_name,
    peak_rss_mib,
    raise_nofile_limit,
    run_on_loop,
)
from benchmarks.bare_clients import _drive as drive
from benchmarks.nginx_target import loopback_addresses, nginx_target, spread_urls
from shared.engine import DEFAULT_MAX_RESPONSE_BYTES

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = ("trs", "bare", "contract")
#: What ``--quick`` runs unless ``--runs`` says otherwise: a third 15 s child would take it past a minute.
QUICK_RUNS = ("trs", "bare")
SERVICE_NAME = "bench"
FULL_TASKS = 100_000
FULL_CAP = 16_000
QUICK_TASKS = 20_000
SLEEP_SECONDS = 2.0
ADDRESSES = 8
#: Per-task timeout. A local task's deadline counts from launch, so it must cover the whole batch.
TASK_TIMEOUT = 300.0
#: Wall-clock bound on one measurement subprocess.
CHILD_TIMEOUT = 900.0


@dataclass(frozen=True)
class ChildReport:
    run: str
    loop: str
    tasks: int
    cap: int
    ok: int
    seconds: float
    build_seconds: float | None
    peak_rss_mib: float
    outcomes: dict[str, int]


def _is_2xx(status: int) -> bool:
    return 200 <= status < 300


async def _run_trs(urls: list[str], cap: int) -> tuple[float, float, collections.Counter[str]]:
    from producer import HttpRequest, Task, TaskRunner

    async with TaskRunner(mode="local", service_name=SERVICE_NAME, max_inflight=cap) as runner:
        started = time.perf_counter()
        tasks = [Task(service_name=SERVICE_NAME, request=HttpRequest(url=url), timeout=TASK_TIMEOUT) for url in urls]
        gc.collect()
        launched = time.perf_counter()
        batch = await runner.launch(tasks)
        results = await batch.wait()
        finished = time.perf_counter()
        outcomes: collections.Counter[str] = collections.Counter(
            str(r.response.status_code) if r.response is not None else r.outcome for r in results
        )
        return finished - launched, launched - started, outcomes


async def _run_contract(urls: list[str], cap: int) -> int:
    kept: list[Kept] = []
    fetcher = contract_fetcher(cap, kept, request_timeout=TASK_TIMEOUT, max_body_bytes=DEFAULT_MAX_RESPONSE_BYTES)
    async with fetcher as fetch:
        return await drive(urls, cap, fetch)


def run_child(run: str, base_urls: list[str], tasks: int, cap: int, *, use_uvloop: bool) -> ChildReport:
    """Run the whole workload once in this process."""
    raise_nofile_limit(cap + FD_HEADROOM)
    urls = spread_urls(base_urls, "/sleep", tasks)
    build: float | None = None
    if run == "trs":
        seconds, build, outcomes = run_on_loop(lambda: _run_trs(urls, cap), use_uvloop=use_uvloop)
        ok = sum(n for outcome, n in outcomes.items() if outcome.isdigit() and _is_2xx(int(outcome)))
    else:
        gc.collect()
        started = time.perf_counter()
        if run == "bare":
            ok = run_on_loop(lambda: bare_pyreqwest(urls, cap, request_timeout=TASK_TIMEOUT), use_uvloop=use_uvloop)
        else:
            ok = run_on_loop(lambda: _run_contract(urls, cap), use_uvloop=use_uvloop)
        seconds = time.perf_counter() - started
        outcomes = collections.Counter({"2xx": ok, "other": tasks - ok})
    return ChildReport(
        run=run,
        loop=loop_name(use_uvloop=use_uvloop),
        tasks=tasks,
        cap=cap,
        ok=ok,
        seconds=round(seconds, 3),
        build_seconds=None if build is None else round(build, 3),
        peak_rss_mib=round(peak_rss_mib(), 1),
        outcomes=dict(outcomes),
    )


def _spawn(run: str, base_urls: list[str], tasks: int, cap: int, *, use_uvloop: bool) -> ChildReport:
    cmd = [sys.executable, "-m", "benchmarks.local_concurrency", "--child", run, "--tasks", str(tasks)]
    cmd += ["--cap", str(cap), "--base-urls", ",".join(base_urls)]
    if not use_uvloop:
        cmd.append("--no-uvloop")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    # stderr passes through, so a child's warnings show; stdout carries its one JSON line.
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=CHILD_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{run} exited with {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{run} printed no report")
    return ChildReport(**json.loads(lines[-1]))


def combine(reports: list[ChildReport]) -> ChildReport:
    """One side's processes as one report: the median of their times, the highest peak RSS, every outcome."""
    first = reports[0]
    outcomes: collections.Counter[str] = collections.Counter()
    for report in reports:
        outcomes.update(report.outcomes)
    builds = [r.build_seconds for r in reports if r.build_seconds is not None]
    return ChildReport(
        run=first.run,
        loop=first.loop,
        tasks=first.tasks,
        cap=first.cap,
        ok=min(r.ok for r in reports),
        seconds=round(statistics.median(r.seconds for r in reports), 3),
        build_seconds=round(statistics.median(builds), 3) if builds else None,
        peak_rss_mib=max(r.peak_rss_mib for r in reports),
        outcomes=dict(outcomes),
    )


def summarize(reports: dict[str, ChildReport], *, tasks: int, cap: int) -> dict[str, Any]:
    trs = reports.get("trs")
    bare = reports.get("bare")
    contract = reports.get("contract")

    def ratio(side: ChildReport | None) -> float | None:
        return round(trs.seconds / side.seconds, 3) if trs is not None and side is not None else None

    ideal = tasks / cap * SLEEP_SECONDS
    return {
        "tasks": tasks,
        "ok": trs.ok if trs is not None else None,
        "seconds": trs.seconds if trs is not None else None,
        "ideal_seconds": round(ideal, 3),
        "ratio_to_ideal": round(trs.seconds / ideal, 3) if trs is not None else None,
        "bare_seconds": bare.seconds if bare is not None else None,
        "ratio_vs_bare": ratio(bare),
        "contract_seconds": contract.seconds if contract is not None else None,
        "ratio_vs_same_contract": ratio(contract),
        "peak_rss_mib": trs.peak_rss_mib if trs is not None else None,
        "build_seconds": trs.build_seconds if trs is not None else None,
        "bare_ok": bare.ok if bare is not None else None,
        "bare_peak_rss_mib": bare.peak_rss_mib if bare is not None else None,
        "contract_ok": contract.ok if contract is not None else None,
        "contract_peak_rss_mib": contract.peak_rss_mib if contract is not None else None,
        "cap": cap,
        "loop": next((r.loop for r in reports.values()), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="TRS local mode: one large batch of slow requests vs bare pyreqwest.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TASKS:,} tasks and a proportional cap")
    parser.add_argument("--tasks", type=int, help=f"tasks in the batch (default {FULL_TASKS:,})")
    parser.add_argument("--cap", type=int, help=f"in-flight cap (default {FULL_CAP:,}, scaled with --tasks)")
    parser.add_argument("--addresses", type=int, default=ADDRESSES, help="spread over this many 127.0.0.x")
    parser.add_argument(
        "--runs", help="comma-separated subset of trs, bare, contract (default all; trs and bare with --quick)"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop everywhere")
    parser.add_argument(
        "--repeat", type=int, default=None, help="times each side runs, taking turns (default 3; 1 with --quick)"
    )
    # Child mode: run one side in this process and print its report; also handy under a profiler.
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--base-urls", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_uvloop = not args.no_uvloop
    tasks = args.tasks or (QUICK_TASKS if args.quick else FULL_TASKS)
    cap = args.cap or max(1, round(FULL_CAP * tasks / FULL_TASKS))

    if args.child is not None:
        if args.base_urls is None:
            with nginx_target(addresses=loopback_addresses(args.addresses), sleep_seconds=SLEEP_SECONDS) as bases:
                report = run_child(args.child, bases, tasks, cap, use_uvloop=use_uvloop)
        else:
            report = run_child(args.child, args.base_urls.split(","), tasks, cap, use_uvloop=use_uvloop)
        print(json.dumps(asdict(report)), flush=True)
        return

    chosen = args.runs if args.runs is not None else ",".join(QUICK_RUNS if args.quick else RUNS)
    runs = [r.strip() for r in chosen.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs: {', '.join(unknown)}")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    processes: dict[str, list[ChildReport]] = {run: [] for run in runs}
    with nginx_target(addresses=loopback_addresses(args.addresses), sleep_seconds=SLEEP_SECONDS) as bases:
        for run in runs * repeat:
            report = _spawn(run, bases, tasks, cap, use_uvloop=use_uvloop)
            processes[run].append(report)
            build = f", build {report.build_seconds:.2f}s" if report.build_seconds is not None else ""
            print(
                f"{run:5s} {report.loop}: {report.tasks:,} GET /sleep ({SLEEP_SECONDS:g}s) cap={cap:,} over "
                f"{args.addresses} addresses -> ok={report.ok:,} in {report.seconds:.2f}s{build}, "
                f"peak RSS {report.peak_rss_mib:.0f} MiB, outcomes {report.outcomes}",
                flush=True,
            )
    reports = {run: combine(found) for run, found in processes.items()}
    summary = summarize(reports, tasks=tasks, cap=cap)
    summary["seconds_each"] = [r.seconds for r in processes.get("trs", [])]
    summary["bare_seconds_each"] = [r.seconds for r in processes.get("bare", [])]
    summary["contract_seconds_each"] = [r.seconds for r in processes.get("contract", [])]
    summary["repeat"] = repeat
    print(json.dumps(summary), flush=True)
    if any(r.ok != r.tasks for found in processes.values() for r in found):
        sys.exit(1)


if __name__ == "__main__":
    main()
