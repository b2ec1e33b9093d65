"""A weak server: TRS against ``xargs -P 200 curl -m 10`` on ``python3 -m http.server``.

``http.server`` listens with a backlog of 5 and closes each connection after one response, so a
burst of 200 requests overflows its accept queue. The kernel then drops the last ACK of some
handshakes: the client holds a connection that looks open while the server never saw it, and
the request sent on it is never acknowledged. The default ramp (``RampPolicy``) starts a burst at
a few requests in flight and stops raising it once requests get stranded; the default
``tcp_user_timeout`` drops a stranded connection and the engine retries the attempt (see
``TransportPolicy``). ``--no-ramp`` runs TRS with the ramp off, to show what it saves.

Each round starts a fresh server for curl and another for TRS (local mode, 200 tasks, timeout
10 s, the default policy), one after the other, so both meet the same machine load. It reports
the median time of each and the median of the rounds' ratios, with every outcome.

    python -m benchmarks.weak_server            # 5 rounds
    python -m benchmarks.weak_server --quick    # 2 rounds, under a minute

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from producer import ClientPolicy, HostPolicy, HttpRequest, Task, TaskRunner, create_task_list

TASKS = 200
TIMEOUT = 10.0


@contextlib.contextmanager
def python_http_server() -> Iterator[str]:
    """``python3 -m http.server`` on a free loopback port, serving one small file; yields its URL."""
    with tempfile.TemporaryDirectory() as root:
        Path(root, "index.html").write_text("hello\n")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(port)
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.terminate()
            server.wait(10)


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def run_curl(url: str, n: int) -> tuple[float, dict[str, int]]:
    """Seconds for ``n`` parallel ``curl -m 10`` of ``url``, and their status codes."""
    started = time.monotonic()
    done = subprocess.run(
        ["xargs", "-P", str(n), "-n", "1", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "-m", "10"],
        input="\n".join([url] * n),
        capture_output=True,
        text=True,
        check=False,
    )
    return time.monotonic() - started, dict(Counter(done.stdout.split()))


async def run_trs(url: str, n: int, transport: str, *, ramp: bool) -> tuple[float, dict[str, int], dict[str, int]]:
    """Seconds for one local batch of ``n`` GETs of ``url``, its outcomes, and attempts by outcome."""
    policy = ClientPolicy() if ramp else ClientPolicy(host=HostPolicy(ramp=None))
    template = Task(service_name="weak", request=HttpRequest(url=url), timeout=TIMEOUT, policy=policy)
    async with TaskRunner(mode="local", service_name="weak", transport=transport) as runner:
        started = time.monotonic()
        results = await (await runner.launch(create_task_list(template, n))).wait()
        seconds = time.monotonic() - started
    attempts = Counter(f"{r.outcome}_{r.attempts}" for r in results)
    return seconds, dict(Counter(r.outcome for r in results)), dict(sorted(attempts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description="TRS against xargs -P curl on python3 -m http.server.")
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--rounds", type=int, help="rounds of curl then TRS")
    parser.add_argument("--transport", default="pyreqwest", choices=["pyreqwest", "httpx"])
    parser.add_argument("--no-ramp", action="store_true", help="run TRS with the per-host ramp off")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("this benchmark needs curl (apt-get install curl)")
    rounds = args.rounds or (2 if args.quick else 5)
    curl_times: list[float] = []
    trs_times: list[float] = []
    rows = []
    for number in range(rounds):
        with python_http_server() as url:
            curl_seconds, curl_codes = run_curl(url, TASKS)
        with python_http_server() as url:
            trs_seconds, outcomes, attempts = asyncio.run(run_trs(url, TASKS, args.transport, ramp=not args.no_ramp))
        curl_times.append(curl_seconds)
        trs_times.append(trs_seconds)
        row = {
            "round": number,
            "curl_s": round(curl_seconds, 3),
            "curl_codes": curl_codes,
            "trs_s": round(trs_seconds, 3),
            "trs_outcomes": outcomes,
            "trs_attempts": attempts,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "tasks": TASKS,
        "transport": args.transport,
        "ramp": not args.no_ramp,
        "rounds": rounds,
        "curl_s_p50": round(statistics.median(curl_times), 3),
        "trs_s_p50": round(statistics.median(trs_times), 3),
        "trs_vs_curl_p50": round(statistics.median(t / c for t, c in zip(trs_times, curl_times, strict=True)), 3),
        "trs_all_answered": all(r["trs_outcomes"] == {"response": TASKS} for r in rows),
        "curl_all_answered": all(r["curl_codes"] == {"200": TASKS} for r in rows),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
