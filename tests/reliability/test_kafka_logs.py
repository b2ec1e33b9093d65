"""A broker that doesn't answer costs one line, not librdkafka's twenty a second.

``trs`` says it in one line on stderr, quoting librdkafka's reason; a worker logs each of
librdkafka's lines once as JSON, however often librdkafka repeats it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.dev.embedded_broker import EmbeddedBroker
from producer.topics import TopicAdmin
from shared.kafka_logging import LIBRDKAFKA_LOGGER, message_shape
from shared.models import HttpRequest, Task
from shared.wire import request_topic
from tests.waiting import wait_until
from tests.worker_process import ROOT, WorkerProcess

#: Seconds a ``trs`` command may take against a broker that never answers: its 10 s Kafka timeout,
#: with room for a slow start on a busy machine.
COMMAND_TIMEOUT = 120
# confluent-kafka's format: "<facility> [<client name>] <librdkafka's line>".
_LIBRDKAFKA_LINE_RE = re.compile(r"^(?P<facility>\S+) \[[^\]]*\] (?P<line>.*)$")


@pytest.fixture
def refused_address() -> Iterator[str]:
    """A loopback address bound but not listening: every connection to it is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def trs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def assert_one_line_for_the_broker(completed: subprocess.CompletedProcess[str], address: str) -> None:
    assert completed.returncode == 1, completed.stdout
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout
    assert lines[0].startswith(f"Error: no Kafka broker answered at {address} within 10 s (last client error: ")
    assert f"Connect to ipv4#{address} failed: Connection refused" in lines[0]


def test_trs_run_remote_prints_one_line_for_a_broker_that_refuses(refused_address: str, tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text(Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1:9/")).model_dump_json())

    completed = trs("run", str(source), "--mode", "remote", "--bootstrap-servers", refused_address)

    assert_one_line_for_the_broker(completed, refused_address)


def test_trs_topics_init_prints_one_line_for_a_broker_that_refuses(refused_address: str) -> None:
    completed = trs("topics", "init", "--service", "cli", "--bootstrap-servers", refused_address)

    assert_one_line_for_the_broker(completed, refused_address)


def librdkafka_lines(log: str) -> list[dict[str, str]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == LIBRDKAFKA_LOGGER]


def shape(message: str) -> tuple[str, str]:
    """What the worker folds a line by: its facility and the shape of librdkafka's text."""
    match = _LIBRDKAFKA_LINE_RE.match(message)
    assert match is not None, message
    return match.group("facility"), message_shape(match.group("line"))


def test_a_worker_logs_each_line_of_a_lost_broker_once_as_json(tmp_path: Path) -> None:
    service = f"logs-{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker:
        admin = TopicAdmin({"bootstrap.servers": broker.bootstrap_servers})
        admin.init([service], partitions=1)
        admin.close()
        worker = WorkerProcess(
            broker.bootstrap_servers, tmp_path / "worker.log", group_id=f"g-{service}", topics=[request_topic(service)]
        )
        try:
            worker.wait_ready()
            broker.stop()
            wait_until(
                lambda: any("Connection refused" in line["message"] for line in librdkafka_lines(worker.log())),
                timeout=30,
                what="the worker's line about the refused broker",
            )
            worker.terminate()
        finally:
            worker.close()

    log = worker.log_path.read_text()
    assert "%3|" not in log and "%4|" not in log, log
    lines = librdkafka_lines(log)
    assert all(line["level"] in ("WARNING", "ERROR", "CRITICAL") for line in lines), lines
    # The worker's three clients retry the broker all along, yet each shape of line shows once.
    shapes = [shape(line["message"]) for line in lines]
    assert len(set(shapes)) == len(shapes), lines
    assert sum("Connection refused" in line["message"] for line in lines) == 1, lines
