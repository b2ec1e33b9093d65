"""Throughput of TRS local mode against the bare client loops, on one loopback nginx.

One run measures, at the same concurrency and on the same event loop implementation (uvloop when installed):

- TRS local mode (``TaskRunner(mode="local")``) on each of its transports, pyreqwest and httpx;
- bare loops of httpx, aiohttp and pyreqwest: ``benchmarks.bare_clients``'s worker pool and client settings, on
  one long-lived client per process;
- ``bare_contract``: a bare pyreqwest loop that does what TRS's contract requires of every request, and no more: a
  streamed read capped at TRS's default body limit, a per-request timeout, status, headers and body kept, and every
  result kept until the round ends. ``ratio_vs_same_contract`` compares TRS with it.

Every client GETs nginx's tiny ``/`` body. nginx is a separate process, started once for the whole run.

Each measurement runs in a fresh subprocess. TRS keeps every Task and TaskResult of a batch alive, and the
cost of Python's cyclic GC grows with the live heap, so a client that ran after another would pay for what the
first one left behind; a fresh process also starts with a fresh HTTP runtime (pyreqwest's tokio thread), a
cold allocator and its own peak RSS. Within a process, each client first runs a warm-up pass (imports, code
paths, connection pool), then a few measured rounds on the same runner or client; the figure is the median round.
Warm matters most for httpx, whose pool takes a few seconds to settle (see ``HTTPX_WARMUP_SECONDS``).
The speed of this machine drifts by a third over minutes (three busy threads share two cores: the event loop,
pyreqwest's runtime thread and nginx), so a full run repeats the whole sequence of clients (``--repeat``) and a
client's figure is the median over its processes: a slow spell then can't fall on one client only.
TRS's task list is built before the clock starts (its cost is reported as ``trs_build_us_per_task``); the clock
then covers ``launch`` until the last result is in, which is what a caller waits for. Building ends with a full
garbage collection: CPython defers part of an allocation's cost to the next full collection, which comes once the
long-lived heap has grown by a quarter, so without it the 50,000 freshly built tasks would bring one forward into
the clock and have it traverse them there. Every client, bare ones included, starts each round from a collected heap.

httpx manages well under a thousand requests per second here, so its runs use fewer requests.

    python -m benchmarks.local_throughput            # full run
    python -m benchmarks.local_throughput --quick    # under a minute
    python -m benchmarks.local_throughput --runs trs_pyreqwest,bare_pyreqwest --repeat 5

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.bare_clients import Kept, contract_fetcher, loop_name, peak_rss_mib, run_on_loop
from benchmarks.bare_clients import _drive as drive
from benchmarks.nginx_target import nginx_target, spread_urls

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS = ("bare_pyreqwest", "trs_pyreqwest", "bare_contract", "bare_aiohttp", "bare_httpx", "trs_httpx")
#: The largest body the contract loop reads: TRS's default limit.
MAX_BODY_BYTES = 700_000
SERVICE_NAME = "bench"
#: Per-task timeout. In local mode a task's deadline counts from launch, so it must cover the whole batch.
TASK_TIMEOUT = 600.0
#: Per-request timeout of the bare loops, as in ``benchmarks.bare_clients``.
REQUEST_TIMEOUT = 60.0
#: httpx's pool scans every connection on each request (encode/httpx#3215), so a pool of 100 connections runs at
#: about 100 req/s here. Its default 5 s keep-alive expiry, which TRS's httpx transport keeps too, lets the unused ones
#: go, and the pool settles at a dozen connections and 1,000+ req/s. Warming up for longer than that expiry measures
#: the settled state.
HTTPX_WARMUP_SECONDS = 6.0
#: Wall-clock bound on one measurement subprocess.
CHILD_TIMEOUT = 900.0


Fetch = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class Plan:
    """How many requests one client's subprocess sends."""

    requests: int
    rounds: int
    #: Requests per warm-up pass; passes repeat until ``warmup_seconds`` have gone by.
    warmup: int
    warmup_seconds: float


@dataclass(frozen=True)
class Round:
    seconds: float
    ok: int
    build_seconds: float = 0.0


@dataclass(frozen=True)
class ChildReport:
    """One measurement subprocess, or (from ``combine``) every process of one client."""

    run: str
    loop: str
    requests: int
    rounds_rps: list[float]
    rps: float
    failed: int
    build_us_per_task: float | None
    peak_rss_mib: float


def _plans(quick: bool) -> tuple[Plan, Plan]:
    """(plan for the fast clients, plan for httpx)."""
    if quick:
        fast = Plan(requests=10_000, rounds=3, warmup=2_000, warmup_seconds=0.5)
        return fast, Plan(requests=400, rounds=3, warmup=100, warmup_seconds=HTTPX_WARMUP_SECONDS)
    fast = Plan(requests=50_000, rounds=5, warmup=5_000, warmup_seconds=1.0)
    return fast, Plan(requests=2_000, rounds=3, warmup=200, warmup_seconds=HTTPX_WARMUP_SECONDS)


async def _warm_up(plan: Plan, one_pass: Callable[[int], Awaitable[object]]) -> None:
    # The first pass opens a connection per request in flight. The clock starts after it, so that on a slow spell
    # too the ones httpx's pool no longer needs have outlived its keep-alive expiry before the measured rounds.
    await one_pass(plan.warmup)
    deadline = time.perf_counter() + plan.warmup_seconds
    while time.perf_counter() < deadline:
        await one_pass(plan.warmup)


def _is_2xx(status: int) -> bool:
    return 200 <= status < 300


async def _trs_rounds(transport: str, urls: list[str], plan: Plan, concurrency: int) -> list[Round]:
    from producer import HttpRequest, Task, TaskRunner

    async with TaskRunner(
        mode="local", service_name=SERVICE_NAME, transport=transport, max_inflight=concurrency
    ) as runner:

        async def one(count: int) -> Round:
            started = time.perf_counter()
            tasks = [
                Task(service_name=SERVICE_NAME, request=HttpRequest(url=url), timeout=TASK_TIMEOUT)
                for url in urls[:count]
            ]
            gc.collect()
            launched = time.perf_counter()
            batch = await runner.launch(tasks)
            results = await batch.wait()
            finished = time.perf_counter()
            ok = sum(1 for r in results if r.response is not None and _is_2xx(r.response.status_code))
            # Free the batch so the next round starts from the same heap.
            await runner.close(batch)
            return Round(seconds=finished - launched, ok=ok, build_seconds=launched - started)

        await _warm_up(plan, one)
        return [await one(plan.requests) for _ in range(plan.rounds)]


@contextlib.asynccontextmanager
async def _bare_fetcher(client: str, concurrency: int, kept: list[Kept]) -> AsyncIterator[Fetch]:
    """A fetch function on one long-lived client, configured as in ``benchmarks.bare_clients``.

    The ``bare_*`` helpers build a client per call, so their warm-up would warm nothing but imports. TRS keeps one
    runner (one pool) across its rounds; the bare loops get the same, so both sides are measured warm.
    """
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as httpx_client:

            async def fetch_httpx(url: str) -> bool:
                response = await httpx_client.get(url)
                return response.is_success

            yield fetch_httpx
    elif client == "aiohttp":
        import aiohttp

        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def fetch_aiohttp(url: str) -> bool:
                async with session.get(url) as response:
                    await response.read()
                    return _is_2xx(response.status)

            yield fetch_aiohttp
    elif client == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        builder = ClientBuilder().max_connections(concurrency).timeout(timedelta(seconds=REQUEST_TIMEOUT))
        async with builder.build() as pyreqwest_client:

            async def fetch_pyreqwest(url: str) -> bool:
                response = await pyreqwest_client.get(url).build().send()
                await response.bytes()
                return _is_2xx(response.status)

            yield fetch_pyreqwest
    elif client == "contract":
        fetcher = contract_fetcher(concurrency, kept, request_timeout=REQUEST_TIMEOUT, max_body_bytes=MAX_BODY_BYTES)
        async with fetcher as fetch_contract:
            yield fetch_contract
    else:
        raise ValueError(f"unknown bare client {client!r}")


async def _bare_rounds(client: str, urls: list[str], plan: Plan, concurrency: int) -> list[Round]:
    # The contract loop's results: every one stays alive until its round ends, as TRS keeps its batch's.
    kept: list[Kept] = []
    async with _bare_fetcher(client, concurrency, kept) as fetch:
        await _warm_up(plan, lambda count: drive(urls[:count], concurrency, fetch))
        rounds = []
        for _ in range(plan.rounds):
            kept.clear()
            gc.collect()
            started = time.perf_counter()
            ok = await drive(urls[: plan.requests], concurrency, fetch)
            rounds.append(Round(seconds=time.perf_counter() - started, ok=ok))
        return rounds


def run_child(run: str, base_url: str, plan: Plan, concurrency: int, *, use_uvloop: bool) -> ChildReport:
    """Measure ``run`` in this process: a warm-up pass, then ``plan.rounds`` measured rounds."""
    urls = spread_urls([base_url], "/", max(plan.requests, plan.warmup))
    kind, _, client = run.partition("_")
    if kind == "trs":
        rounds = run_on_loop(lambda: _trs_rounds(client, urls, plan, concurrency), use_uvloop=use_uvloop)
    else:
        rounds = run_on_loop(lambda: _bare_rounds(client, urls, plan, concurrency), use_uvloop=use_uvloop)
    rounds_rps = [plan.requests / r.seconds for r in rounds]
    build = sum(r.build_seconds for r in rounds)
    return ChildReport(
        run=run,
        loop=loop_name(use_uvloop=use_uvloop),
        requests=plan.requests,
        rounds_rps=[round(x, 1) for x in rounds_rps],
        rps=round(statistics.median(rounds_rps), 1),
        failed=sum(plan.requests - r.ok for r in rounds),
        build_us_per_task=round(build / (plan.requests * len(rounds)) * 1e6, 2) if kind == "trs" else None,
        peak_rss_mib=round(peak_rss_mib(), 1),
    )


def _spawn(run: str, base_url: str, plan: Plan, concurrency: int, *, use_uvloop: bool) -> ChildReport:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.local_throughput",
        "--child",
        run,
        "--base-url",
        base_url,
        "--requests",
        str(plan.requests),
        "--rounds",
        str(plan.rounds),
        "--warmup",
        str(plan.warmup),
        "--warmup-seconds",
        str(plan.warmup_seconds),
        "--concurrency",
        str(concurrency),
    ]
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
    """One client's processes as one report: the median of their figures, every round, every failure."""
    first = reports[0]
    return ChildReport(
        run=first.run,
        loop=first.loop,
        requests=first.requests,
        rounds_rps=[x for r in reports for x in r.rounds_rps],
        rps=round(statistics.median(r.rps for r in reports), 1),
        failed=sum(r.failed for r in reports),
        build_us_per_task=(
            None
            if first.build_us_per_task is None
            else round(statistics.median(r.build_us_per_task or 0.0 for r in reports), 2)
        ),
        peak_rss_mib=max(r.peak_rss_mib for r in reports),
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def summarize(reports: dict[str, ChildReport], *, concurrency: int, fast: Plan, slow: Plan) -> dict[str, Any]:
    def rps(run: str) -> float | None:
        report = reports.get(run)
        return report.rps if report is not None else None

    bare = [x for x in (rps("bare_httpx"), rps("bare_aiohttp"), rps("bare_pyreqwest")) if x is not None]
    trs = rps("trs_pyreqwest")
    trs_report = reports.get("trs_pyreqwest")
    loops = sorted({r.loop for r in reports.values()})
    return {
        "trs_rps": trs,
        "trs_rps_pyreqwest": trs,
        "trs_rps_httpx": rps("trs_httpx"),
        "bare_rps_httpx": rps("bare_httpx"),
        "bare_rps_aiohttp": rps("bare_aiohttp"),
        "bare_rps_pyreqwest": rps("bare_pyreqwest"),
        "bare_rps_same_contract": rps("bare_contract"),
        "ratio_vs_fastest_bare": _ratio(trs, max(bare) if bare else None),
        "ratio_vs_same_contract": _ratio(trs, rps("bare_contract")),
        "ratio_vs_httpx_bare": _ratio(trs, rps("bare_httpx")),
        "ratio_httpx_vs_bare_httpx": _ratio(rps("trs_httpx"), rps("bare_httpx")),
        "trs_build_us_per_task": trs_report.build_us_per_task if trs_report is not None else None,
        "concurrency": concurrency,
        "requests": fast.requests,
        "httpx_requests": slow.requests,
        "loop": loops[0] if len(loops) == 1 else loops,
        "failed": sum(r.failed for r in reports.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="TRS local-mode throughput against bare client loops.")
    parser.add_argument("--quick", action="store_true", help="fewer requests: finishes in under a minute")
    parser.add_argument("--concurrency", type=int, default=100, help="requests in flight, for every client")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument(
        "--repeat", type=int, default=None, help="times the whole sequence of clients runs (default 3; 1 with --quick)"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop everywhere")
    # Child mode: measure one client in this process and print its report; also handy under a profiler.
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup-seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_uvloop = not args.no_uvloop
    fast, slow = _plans(args.quick)

    if args.child is not None:
        default = slow if "httpx" in args.child else fast
        plan = Plan(
            requests=args.requests or default.requests,
            rounds=args.rounds or default.rounds,
            warmup=default.warmup if args.warmup is None else args.warmup,
            warmup_seconds=default.warmup_seconds if args.warmup_seconds is None else args.warmup_seconds,
        )
        if args.base_url is None:
            with nginx_target() as bases:
                report = run_child(args.child, bases[0], plan, args.concurrency, use_uvloop=use_uvloop)
        else:
            report = run_child(args.child, args.base_url, plan, args.concurrency, use_uvloop=use_uvloop)
        print(json.dumps(asdict(report)), flush=True)
        return

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs: {', '.join(unknown)}")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    processes: dict[str, list[ChildReport]] = {run: [] for run in runs}
    started = time.perf_counter()
    with nginx_target() as bases:
        for run in runs * repeat:
            plan = slow if "httpx" in run else fast
            report = _spawn(run, bases[0], plan, args.concurrency, use_uvloop=use_uvloop)
            processes[run].append(report)
            build = f", build {report.build_us_per_task} us/task" if report.build_us_per_task is not None else ""
            print(
                f"{run:15s} {report.loop}: {report.rps:>9,.0f} req/s (median of {report.rounds_rps}), "
                f"{report.requests} GET x {len(report.rounds_rps)} rounds, c={args.concurrency}, "
                f"failed {report.failed}, peak RSS {report.peak_rss_mib:.0f} MiB{build}",
                flush=True,
            )
    reports = {run: combine(found) for run, found in processes.items()}
    summary = summarize(reports, concurrency=args.concurrency, fast=fast, slow=slow)
    summary["repeat"] = repeat
    print(f"total {time.perf_counter() - started:.1f}s", flush=True)
    print(json.dumps(summary), flush=True)
    if summary["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
