"""A batch against a fleet with dead hosts: TRS with its circuit breaker, TRS without, and a bare pyreqwest loop.

20,000 GET tasks go round-robin over 500 loopback hosts (one port each on 127.0.0.1). Of the hosts, 10% accept a
connection and never answer, 5% reset every connection they accept (what a client sees as refused), and the rest
answer ``200 ok`` at once. Every variant keeps at most 4 requests in flight per host and 2,000 in all, and gives
each attempt ``--attempt-timeout`` seconds (TRS through ``response_header_timeout``; a task's own deadline is long
enough for the whole batch, so none expires in the queue).

- ``breaker``: TRS local mode, the default retry policy and the default circuit breaker (5 failures, 30 s cool-down).
- ``no_breaker``: the same with ``breaker=None``.
- ``bare``: pyreqwest alone, one attempt per task with the same timeout, under an ``asyncio.Semaphore(4)`` per host:
  it never retries, so it is the floor of attempts a client without a breaker makes.

The hosts run in a child process (uvloop), which counts every connection a dead host accepted: those are the
attempts against dead hosts. Healthy latency is a task's ``elapsed``, its wait for the host's turn included.
Variants run one after another in one process each round; ``--rounds`` interleaves them and reports medians.

    python -m benchmarks.fleet --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from benchmarks.bare_clients import raise_nofile_limit, run_on_loop

HOSTS = 500
#: A task's deadline: room for the whole batch, so the attempt timeout alone decides a dead host's cost.
TASK_TIMEOUT = 600.0
SILENT_SHARE = 0.10
REFUSING_SHARE = 0.05
PER_HOST = 4
INFLIGHT = 2000
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


@dataclass(frozen=True)
class Fleet:
    healthy: list[str]
    silent: list[str]
    refusing: list[str]

    def urls(self, tasks: int) -> list[tuple[str, bool]]:
        """``tasks`` URLs, round-robin over every host, each with whether its host is healthy."""
        hosts = [(u, True) for u in self.healthy] + [(u, False) for u in self.silent + self.refusing]
        # Spread the dead hosts through the order, so no variant meets them all at once.
        hosts.sort(key=lambda h: hash(h[0]) % 997)
        return [(f"{hosts[i % len(hosts)][0]}/ok", hosts[i % len(hosts)][1]) for i in range(tasks)]


@dataclass(frozen=True)
class Run:
    seconds: float
    dead_host_attempts: int
    healthy_p99_ms: float
    healthy_ok: int


# --- the hosts (child process) ----------------------------------------------------------------------------------


async def _serve(silent: int, refusing: int, healthy: int) -> None:
    counts = {"dead": 0}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            writer.close()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["dead"] += 1
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        writer.close()

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["dead"] += 1
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    ports: dict[str, list[int]] = {"silent": [], "refusing": [], "healthy": []}
    for kind, handler, count in (("silent", hang, silent), ("refusing", reset, refusing), ("healthy", answer, healthy)):
        for _ in range(count):
            server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=1024)
            ports[kind].append(server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    # One line on stdin asks for the count so far; end of input stops the hosts.
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps(counts), flush=True)


@contextmanager
def fleet_hosts() -> Iterator[tuple[Fleet, subprocess.Popen[str]]]:
    silent, refusing = int(HOSTS * SILENT_SHARE), int(HOSTS * REFUSING_SHARE)
    counts = [str(silent), str(refusing), str(HOSTS - silent - refusing)]
    command = [sys.executable, "-m", "benchmarks.fleet", "--serve", *counts]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        ports = json.loads(process.stdout.readline())
        fleet = Fleet(*([f"http://127.0.0.1:{p}" for p in ports[k]] for k in ("healthy", "silent", "refusing")))
        try:
            yield fleet, process
        finally:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(10)


def dead_host_connections(process: subprocess.Popen[str]) -> int:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("count\n")
    process.stdin.flush()
    return int(json.loads(process.stdout.readline())["dead"])


# --- the variants -----------------------------------------------------------------------------------------------


def _p99_ms(latencies: list[float]) -> float:
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1)


async def run_trs(urls: list[tuple[str, bool]], attempt_timeout: float, *, breaker: bool) -> tuple[float, float, int]:
    from producer import ClientPolicy, HttpRequest, Task, TaskRunner

    host: dict[str, Any] = {"max_concurrent_per_host": PER_HOST}
    if not breaker:
        host["breaker"] = None
    # One policy object for every task, as a template's copies share theirs.
    policy = ClientPolicy.model_validate({"host": host, "transport": {"response_header_timeout": attempt_timeout}})
    tasks = [
        Task(service_name="fleet", request=HttpRequest(url=url), timeout=TASK_TIMEOUT, policy=policy) for url, _ in urls
    ]
    healthy = {t.id for t, (_, ok) in zip(tasks, urls, strict=True) if ok}
    started = time.perf_counter()
    async with TaskRunner(mode="local", service_name="fleet", max_inflight=INFLIGHT) as runner:
        results = await (await runner.launch(tasks)).wait()
    seconds = time.perf_counter() - started
    latencies = [r.elapsed for r in results if r.task_id in healthy]
    return seconds, _p99_ms(latencies), sum(1 for r in results if r.task_id in healthy and r.ok)


async def run_bare(urls: list[tuple[str, bool]], attempt_timeout: float) -> tuple[float, float, int]:
    from pyreqwest.client import ClientBuilder

    limits: dict[str, asyncio.Semaphore] = {}
    latencies: list[float] = []
    ok = 0
    pending = iter(urls)
    builder = ClientBuilder().max_connections(INFLIGHT).timeout(timedelta(seconds=attempt_timeout))
    started = time.perf_counter()
    async with builder.build() as client:

        async def worker() -> None:
            nonlocal ok
            for url, healthy in pending:
                limit = limits.setdefault(url, asyncio.Semaphore(PER_HOST))
                began = time.perf_counter()
                try:
                    async with limit:
                        response = await client.get(url).build().send()
                        await response.bytes()
                except Exception:
                    # A dead host's failure is what the benchmark expects; only healthy answers are counted.
                    continue
                if healthy:
                    latencies.append(time.perf_counter() - began)
                    ok += 200 <= response.status < 300

        await asyncio.gather(*(worker() for _ in range(INFLIGHT)))
    return time.perf_counter() - started, _p99_ms(latencies), ok


def measure(variant: str, fleet: Fleet, process: subprocess.Popen[str], tasks: int, attempt_timeout: float) -> Run:
    urls = fleet.urls(tasks)
    before = dead_host_connections(process)
    if variant == "bare":
        seconds, p99, ok = run_on_loop(lambda: run_bare(urls, attempt_timeout))
    else:
        seconds, p99, ok = run_on_loop(lambda: run_trs(urls, attempt_timeout, breaker=variant == "breaker"))
    return Run(round(seconds, 2), dead_host_connections(process) - before, p99, ok)


def _median(runs: list[Run]) -> Run:
    return Run(*(statistics.median(getattr(r, f) for r in runs) for f in Run.__dataclass_fields__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 tasks, 1 s attempts: under a minute")
    parser.add_argument("--tasks", type=int, default=None, help="tasks in the batch (default 20,000)")
    parser.add_argument("--attempt-timeout", type=float, default=None, help="seconds per attempt (5; 1 quick)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds, reported as medians (default 1)")
    parser.add_argument("--serve", nargs=3, type=int, metavar=("SILENT", "REFUSING", "HEALTHY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_on_loop(lambda: _serve(*args.serve))
        return
    tasks = args.tasks or (3_000 if args.quick else 20_000)
    attempt_timeout = args.attempt_timeout or (1.0 if args.quick else 5.0)
    rounds = args.rounds or 1
    raise_nofile_limit(4 * INFLIGHT + 1024)
    runs: dict[str, list[Run]] = {"breaker": [], "no_breaker": [], "bare": []}
    with fleet_hosts() as (fleet, process):
        for n in range(rounds):
            for variant in runs:
                runs[variant].append(measure(variant, fleet, process, tasks, attempt_timeout))
                print(f"round {n + 1} {variant}: {runs[variant][-1]}", file=sys.stderr, flush=True)
    median = {v: _median(rs) for v, rs in runs.items()}
    summary = {
        "tasks": tasks,
        "hosts": HOSTS,
        "attempt_timeout_s": attempt_timeout,
        "rounds": rounds,
        "seconds_breaker": median["breaker"].seconds,
        "seconds_no_breaker": median["no_breaker"].seconds,
        "seconds_bare": median["bare"].seconds,
        "dead_host_attempts_breaker": median["breaker"].dead_host_attempts,
        "dead_host_attempts_no_breaker": median["no_breaker"].dead_host_attempts,
        "dead_host_attempts_bare": median["bare"].dead_host_attempts,
        "healthy_p99_ms_breaker": median["breaker"].healthy_p99_ms,
        "healthy_p99_ms_no_breaker": median["no_breaker"].healthy_p99_ms,
        "healthy_p99_ms_bare": median["bare"].healthy_p99_ms,
        "healthy_ok_breaker": median["breaker"].healthy_ok,
        "speedup_breaker_vs_no_breaker": round(median["no_breaker"].seconds / median["breaker"].seconds, 2),
        "dead_attempts_ratio_no_breaker_vs_breaker": round(
            median["no_breaker"].dead_host_attempts / max(1, median["breaker"].dead_host_attempts), 1
        ),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
