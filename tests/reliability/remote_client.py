"""A remote client in a process of its own, for faults that may kill it: the script and its handle.

Run as ``python -m tests.reliability.remote_client``, it launches one batch on a remote runner (with
``--quick-url``, one task of that URL first: its result proves that the reader reads the reply
topic) and prints one JSON line per event on stdout: ``launched`` (with the reply topic), ``result`` (task id,
outcome, seconds since the launch), ``ended``; then, with ``--then-url``, a second batch on the
same runner the same way, or ``error`` with the exception that its launch raised; then ``done``.

``RemoteClient`` starts it and reads its events with deadlines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from producer import HttpRequest, Task, TaskRunner, TrsError
from shared.wire import reply_topic
from tests.worker_process import ROOT

#: Seconds a blocking call of the client may take (topic admin, flush).
REQUEST_TIMEOUT = 5.0


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def _one_batch(
    runner: TaskRunner, service: str, url: str, count: int, timeout: float, quick_url: str | None = None
) -> None:
    template = Task(service_name=service, request=HttpRequest(url=url), timeout=timeout)
    tasks = runner.create_task_list(template, count)
    if quick_url:
        tasks.insert(0, Task(service_name=service, request=HttpRequest(url=quick_url), timeout=timeout))
    started = time.monotonic()
    batch = await runner.launch(tasks)
    _emit("launched", batch=batch.id, reply_topic=reply_topic(service, batch.id))
    async for result in batch:
        _emit("result", task=str(result.task_id), outcome=result.outcome, at=time.monotonic() - started)
    _emit("ended", batch=batch.id, at=time.monotonic() - started)
    await runner.close(batch)


async def _main(options: argparse.Namespace) -> None:
    async with TaskRunner(
        mode="remote",
        service_name=options.service,
        bootstrap_servers=options.bootstrap,
        result_grace=options.grace,
        request_timeout=REQUEST_TIMEOUT,
    ) as runner:
        await _one_batch(runner, options.service, options.url, options.tasks, options.timeout, options.quick_url)
        if options.then_url:
            try:
                await _one_batch(runner, options.service, options.then_url, options.then_tasks, options.timeout)
            except TrsError as exc:
                _emit("error", type=type(exc).__name__, message=str(exc))
    _emit("done")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--quick-url")
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--then-url")
    parser.add_argument("--then-tasks", type=int, default=1)
    return parser.parse_args()


class RemoteClient:
    """The script above in a subprocess; its events are read on a thread, so every wait has a deadline."""

    def __init__(self, *arguments: str) -> None:
        command = [sys.executable, "-m", "tests.reliability.remote_client", *arguments]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def next_event(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next event of ``kind``; fails after ``timeout`` seconds or when the client ended first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} event from the client within {timeout:g} s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._lines.put(None)
                raise AssertionError(
                    f"the client ended (exit code {self.process.wait(10)}) before a {kind!r} event:\n{self.stderr}"
                )
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            if event["event"] == kind:
                return event

    def results(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "result"]

    def wait(self, timeout: float) -> int:
        """The exit code; fails if the client still runs after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the client still runs after {timeout:g} s") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


if __name__ == "__main__":
    asyncio.run(_main(_arguments()))
