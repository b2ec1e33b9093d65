"""A cluster for a laptop: the embedded broker, the shared topics and a few ``trs-worker`` processes.

Everything it starts stops with it: on exit, on an exception, and (through the parent-death
signal) if this process is killed.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from producer.dev.embedded_broker import EmbeddedBroker, free_port, with_parent_death_signal
from producer.topics import TopicAdmin
from shared.errors import TrsError

__all__ = ["DevCluster", "DevWorker", "dev_cluster"]

log = logging.getLogger(__name__)

#: Seconds a worker gets to join its group (about half the session timeout on the embedded broker).
READY_TIMEOUT = 60.0
#: Session timeout of the dev workers: short, so they join quickly.
SESSION_TIMEOUT_MS = 6000
#: Seconds a worker gets to drain after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0


@dataclass(frozen=True)
class DevWorker:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"


@dataclass(frozen=True)
class DevCluster:
    bootstrap_servers: str
    broker_pid: int
    workers: list[DevWorker]


@contextlib.contextmanager
def dev_cluster(
    *,
    workers: int,
    services: Sequence[str],
    log_dir: Path | None = None,
    max_inflight: int = 1000,
    worker_flags: Sequence[str] = (),
) -> Iterator[DevCluster]:
    """Start a broker and ``workers`` workers, create the topics of ``services``, and yield once all are ready.

    ``worker_flags`` go to every worker's command line, after the cluster's own.
    """
    with EmbeddedBroker() as broker:
        TopicAdmin({"bootstrap.servers": broker.bootstrap_servers}).init(services)
        started: list[DevWorker] = []
        try:
            for n in range(workers):
                started.append(_start_worker(broker.bootstrap_servers, n, log_dir, max_inflight, worker_flags))
            for worker in started:
                _wait_ready(worker)
            pid = broker.pid
            yield DevCluster(broker.bootstrap_servers, pid, started)
        finally:
            _stop(started)


def _start_worker(bootstrap: str, n: int, log_dir: Path | None, max_inflight: int, extra: Sequence[str]) -> DevWorker:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "consumer",
        "--bootstrap-servers",
        bootstrap,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--instance-id",
        f"dev-worker-{n}",
        "--session-timeout-ms",
        str(SESSION_TIMEOUT_MS),
        "--max-inflight",
        str(max_inflight),
        # New services' request topics are found within two seconds.
        "--metadata-refresh-ms",
        "2000",
        "--log-format",
        "text",
        *extra,
    ]
    output = subprocess.DEVNULL if log_dir is None else (log_dir / f"worker-{n}.log").open("ab")
    process = subprocess.Popen(
        with_parent_death_signal(command, "TERM"),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        # Ctrl-C reaches this process only; the workers are stopped in order, by SIGTERM.
        start_new_session=True,
    )
    return DevWorker(process, port)


def _wait_ready(worker: DevWorker) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise TrsError(f"a dev worker exited with {worker.process.returncode} before it was ready")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise TrsError(f"a dev worker was not ready within {READY_TIMEOUT:g} s")


def _stop(workers: list[DevWorker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("a dev worker did not stop within %g s; killing it", STOP_TIMEOUT)
            worker.process.kill()
            worker.process.wait()
