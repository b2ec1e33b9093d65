"""``trs-worker`` processes for tests: started with real flags, probed over HTTP, stopped by signal."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from producer.dev.embedded_broker import free_port, with_parent_death_signal

ROOT = Path(__file__).resolve().parents[1]
#: Tansu needs about half the session timeout to form a group; a short one keeps tests quick.
SESSION_TIMEOUT_MS = 6000


class WorkerProcess:
    """One worker subprocess, its port and its log."""

    def __init__(self, bootstrap: str, log_path: Path, *, group_id: str, topics: list[str], **flags: object) -> None:
        self.port = free_port()
        self.log_path = log_path
        arguments = {
            "bootstrap-servers": bootstrap,
            "group-id": group_id,
            "topics": ",".join(topics),
            "host": "127.0.0.1",
            "port": self.port,
            "session-timeout-ms": SESSION_TIMEOUT_MS,
            "max-poll-interval-ms": SESSION_TIMEOUT_MS,
            "fetch-wait-max-ms": 5,
            "commit-interval": 0.2,
            "log-format": "json",
            **{name.replace("_", "-"): value for name, value in flags.items()},
        }
        self.command = [sys.executable, "-m", "consumer"]
        for name, value in arguments.items():
            self.command += [f"--{name}"] if value is True else [f"--{name}", str(value)]
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            with_parent_death_signal(self.command, "TERM"),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_env(),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of ``GET path`` on the worker's port."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready within {timeout:g} s:\n{self.log()}")

    def metrics(self) -> dict[str, float]:
        """Every sample on ``/metrics``, keyed ``name{label="value",...}``."""
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(self.get("/metrics")[1]):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def running_workers(
    bootstrap: str,
    log_dir: Path,
    count: int = 1,
    *,
    group_id: str,
    topics: list[str],
    ready: bool = True,
    **flags: object,
) -> Iterator[list[WorkerProcess]]:
    """``count`` workers started together (so they join the group in one rebalance), stopped afterwards."""
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = [
        WorkerProcess(bootstrap, log_dir / f"worker-{n}.log", group_id=group_id, topics=topics, **flags)
        for n in range(count)
    ]
    try:
        if ready:
            for worker in workers:
                worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                if worker.process.poll() is None:
                    worker.terminate(30)
            worker.close()
