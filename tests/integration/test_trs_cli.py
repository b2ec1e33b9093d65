"""The ``trs`` command: run task files in both modes, manage topics, and the laptop cluster (``make run``)."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
from pathlib import Path
from typing import IO

import pytest

from producer import run
from producer.dev.embedded_broker import free_port
from producer.topics import TopicAdmin
from shared.models import HttpRequest, Task, TaskResult
from shared.wire import request_topic
from tests.http_target import HttpTarget
from tests.remote_pools import RemotePools
from tests.trs_cli import trs, trs_command, trs_env
from tests.worker_process import ROOT

pytestmark = pytest.mark.integration


def start_trs(*args: str, stdout: int, stderr: int) -> subprocess.Popen[str]:
    """``trs`` running in the background, its output read as text."""
    return subprocess.Popen(trs_command(*args), cwd=ROOT, stdout=stdout, stderr=stderr, text=True, env=trs_env())


def read_until(stream: IO[str] | None, marker: str, what: str) -> str:
    """The lines of ``stream`` up to the one holding ``marker``; fails if ``what`` ended first."""
    assert stream is not None
    seen = ""
    while marker not in seen:
        line = stream.readline()
        assert line, f"{what} ended before it was ready"
        seen += line
    return seen


def write_tasks(path: Path, tasks: list[Task]) -> Path:
    path.write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    return path


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_run_writes_one_result_line_per_task_and_a_summary(
    mode: str, target: HttpTarget, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    service, extra = "cli", []
    if mode == "remote":
        pools: RemotePools = request.getfixturevalue("remote_pools")
        service, extra = pools.service(()), ["--bootstrap-servers", pools.bootstrap]
    tasks = [Task(service_name=service, request=HttpRequest(url=f"{target.http}/ok")) for _ in range(8)] + [
        Task(service_name=service, request=HttpRequest(url=f"{target.http}/status/404"), labels={"row": "404"})
    ]
    source = write_tasks(tmp_path / "tasks.jsonl", tasks)
    output = tmp_path / "results.jsonl"

    completed = trs("run", str(source), "--mode", mode, "--output", str(output), *extra)

    assert completed.returncode == 0, completed.stderr
    results = [TaskResult.from_json(line) for line in output.read_text().splitlines()]
    assert {r.task_id for r in results} == {t.id for t in tasks}
    line = json.loads(output.read_text().splitlines()[0])
    assert set(line) == {"task_id", "response", "error", "attempts", "elapsed", "labels"}
    assert {r.task_id: r.labels for r in results}[tasks[-1].id] == {"row": "404"}
    assert set(line["response"]) == {"status_code", "headers", "body"}
    table = " ".join(completed.stdout.split())
    assert "9 tasks in" in table
    assert re.search(r"response │ 200 │ 8", table), completed.stdout
    assert re.search(r"response │ 404 │ 1", table), completed.stdout


def test_run_reports_a_missing_file(tmp_path: Path) -> None:
    completed = trs("run", str(tmp_path / "nope.jsonl"))

    assert completed.returncode == 2
    assert "does not exist" in completed.stderr


def test_run_reports_the_line_of_bad_json(tmp_path: Path) -> None:
    good = Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1/")).model_dump_json()
    source = tmp_path / "tasks.jsonl"
    source.write_text(f"{good}\n\n{{not json\n")

    completed = trs("run", str(source))

    assert completed.returncode == 1
    assert f"Error: {source}:3: not valid JSON: Expecting property name enclosed in double quotes" in completed.stderr


def test_run_reports_the_line_and_field_of_an_invalid_task(tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text(json.dumps({"service_name": "cli", "request": {"url": "ftp://127.0.0.1/x"}}) + "\n")

    completed = trs("run", str(source))

    assert completed.returncode == 1
    assert f"Error: {source}:1: request.url: URL scheme must be http or https" in completed.stderr


def test_run_reports_an_unreachable_broker(tmp_path: Path) -> None:
    source = write_tasks(tmp_path / "tasks.jsonl", [Task(service_name="cli", request=HttpRequest(url="http://x/"))])
    address = f"127.0.0.1:{free_port()}"

    completed = trs("run", str(source), "--mode", "remote", "--bootstrap-servers", address, timeout=60)

    assert completed.returncode == 1
    assert f"Error: no Kafka broker answered at {address} within 10 s" in completed.stderr


def test_topics_init_creates_what_is_missing_once(kafka_bootstrap: str, admin: TopicAdmin) -> None:
    first = trs("topics", "init", "--service", "cli-init", "--partitions", "3", "--bootstrap-servers", kafka_bootstrap)
    second = trs("topics", "init", "--service", "cli-init", "--bootstrap-servers", kafka_bootstrap)

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"created {request_topic('cli-init')}"
    assert second.stdout.strip() == "every topic already exists"
    assert admin.exists(request_topic("cli-init"))


def test_topics_gc_rejects_a_bad_duration(kafka_bootstrap: str) -> None:
    completed = trs("topics", "gc", "--older-than", "soon", "--bootstrap-servers", kafka_bootstrap)

    assert completed.returncode == 2
    assert "'soon' is not a duration: use a number with s, m, h or d" in completed.stderr


def test_topics_gc_dry_run_lists_without_deleting(kafka_bootstrap: str) -> None:
    completed = trs("topics", "gc", "--older-than", "1h", "--dry-run", "--bootstrap-servers", kafka_bootstrap)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith("would delete 0 orphaned reply topics")


def test_make_run_demo_runs_a_remote_batch_and_stops_everything(tmp_path: Path) -> None:
    completed = trs("dev", "demo", "--tasks", "200", "--workers", "2", timeout=180)

    assert completed.returncode == 0, completed.stderr
    table = " ".join(completed.stdout.split())
    assert "200 tasks in" in table
    assert re.search(r"response │ 200 │ 200", table), completed.stdout
    # librdkafka logs a lost broker as "%<level>|<time>|FAIL|..."; every client is closed before the broker stops.
    assert "|FAIL|" not in completed.stderr, completed.stderr
    for pid in _started_pids(completed.stderr):
        assert not _alive(pid), pid


def test_ctrl_c_during_the_demo_stops_everything(tmp_path: Path) -> None:
    demo = start_trs("dev", "demo", "--tasks", "1000000", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Printed once the broker, the workers and the fleet are up: all that Ctrl-C must stop.
        started = read_until(demo.stderr, "broker at", "the demo")

        demo.send_signal(signal.SIGINT)
        code = demo.wait(90)
        assert demo.stderr is not None
        rest = demo.stderr.read()
    finally:
        # A demo that ignored Ctrl-C must not run on after the test: its children follow it.
        demo.kill()

    assert code == 130
    assert "stopped; everything it started was shut down" in rest
    pids = _started_pids(started)
    assert len(pids) == 3
    for pid in pids:
        assert not _alive(pid), pid


def _started_pids(text: str) -> list[int]:
    match = re.search(r"\(pid (\d+)\); workers ([\d, ]+);", text)
    assert match is not None, text
    return [int(match.group(1)), *(int(p) for p in match.group(2).split(", "))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent's bookkeeping is left.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_dev_up_serves_remote_batches_until_interrupted(target: HttpTarget) -> None:
    cluster = start_trs(
        "dev", "up", "--workers", "1", "--service", "laptop", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    printed = read_until(cluster.stdout, "export TRS_KAFKA_BOOTSTRAP_SERVERS=", "trs dev up")
    bootstrap = re.search(r"export TRS_KAFKA_BOOTSTRAP_SERVERS=(\S+)", printed).group(1)  # type: ignore[union-attr]
    worker_pid = int(re.search(r"worker pid (\d+)", printed).group(1))  # type: ignore[union-attr]

    tasks = [Task(service_name="laptop", request=HttpRequest(url=f"{target.http}/ok")) for _ in range(20)]
    results = run(tasks, mode="remote", bootstrap_servers=bootstrap)
    cluster.send_signal(signal.SIGINT)
    code = cluster.wait(60)

    assert [r.ok for r in results] == [True] * 20
    assert code == 130
    assert not _alive(worker_pid)


def test_run_draws_a_progress_bar_on_a_terminal(target: HttpTarget, tmp_path: Path) -> None:
    source = write_tasks(
        tmp_path / "tasks.jsonl", [Task(service_name="cli", request=HttpRequest(url=f"{target.http}/ok"))] * 1
    )
    output = tmp_path / "results.jsonl"
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        trs_command("run", str(source), "--output", str(output)),
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=trs_env(TERM="xterm", COLUMNS="100"),
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    code = process.wait(60)
    os.close(leader)

    text = shown.decode(errors="replace")
    assert code == 0
    assert "local batch" in text
    assert "1/1" in text
    assert "1 tasks in" in text
