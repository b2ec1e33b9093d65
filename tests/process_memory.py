"""A process's resident memory, read from ``/proc/<pid>/status``, once or sampled on a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType


def rss_bytes(pid: int) -> int:
    """The resident set size (``VmRSS``) of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds while the block runs: ``(seconds, bytes)``."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self.samples.append((0.0, rss_bytes(self.pid)))
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self.samples.append((time.monotonic() - self._started, rss_bytes(self.pid)))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic() - self._started, rss_bytes(self.pid)))

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)
