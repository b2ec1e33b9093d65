"""``trs run --per-host N --rate-per-host R``: the limits reach every task of the file."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from shared.models import HttpRequest, Task
from tests.http_target import HttpTarget
from tests.trs_cli import trs

pytestmark = pytest.mark.integration


def write_tasks(path: Path, url: str, count: int) -> Path:
    tasks = [Task(service_name="cli", request=HttpRequest(url=url)) for _ in range(count)]
    path.write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    return path


def test_per_host_caps_the_requests_in_flight_to_the_host(target: HttpTarget, tmp_path: Path) -> None:
    k = uuid.uuid4().hex
    source = write_tasks(tmp_path / "tasks.jsonl", f"{target.http}/sleep?s=0.1&key={k}", 30)

    completed = trs("run", str(source), "--per-host", "2", "--output", str(tmp_path / "out.jsonl"))

    assert completed.returncode == 0, completed.stderr
    assert target.hits(k) == 30
    assert target.peak(k) == 2


def test_rate_per_host_spaces_the_requests_out(target: HttpTarget, tmp_path: Path) -> None:
    k = uuid.uuid4().hex
    source = write_tasks(tmp_path / "tasks.jsonl", f"{target.http}/status/200?key={k}", 15)

    completed = trs("run", str(source), "--rate-per-host", "5", "--output", str(tmp_path / "out.jsonl"))

    assert completed.returncode == 0, completed.stderr
    arrivals = sorted(target.arrivals(k))
    assert len(arrivals) == 15
    # A burst of 5 (one second's worth), then 10 more at 5 a second.
    assert arrivals[-1] - arrivals[0] >= 1.8


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--per-host", "0", "Invalid value for '--per-host': 0 is not in the range 1<=x<=100000."),
        ("--rate-per-host", "0", "Invalid value for '--rate-per-host': 0.0 is not in the range 0<x<=100000."),
    ],
)
def test_a_limit_out_of_range_is_refused(tmp_path: Path, flag: str, value: str, message: str) -> None:
    source = write_tasks(tmp_path / "tasks.jsonl", "http://127.0.0.1:9/", 1)

    completed = trs("run", str(source), flag, value)

    assert completed.returncode == 2
    assert message in completed.stderr


def test_topics_init_says_how_to_choose_the_partitions_and_key() -> None:
    completed = trs("topics", "init", "--help")

    assert completed.returncode == 0
    text = " ".join(completed.stdout.split())
    assert 'launch with partition_key="host", so every task for a host goes to one partition' in text
    assert "give a few times more partitions than workers" in text
    assert 'With partition_key="task" each worker keeps its own limits.' in text
