"""A local-mode script exits cleanly: exit code 0 and no native abort at interpreter exit.

Against a target that refuses connections, pyreqwest's runtime thread used to call into Python
while the interpreter was finalizing, and the process died with ``Fatal Python error:
PyGILState_Release`` and exit code 134 in most fresh interpreters. Each scenario runs in several
fresh interpreters, a few at a time, since the abort depends on timing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Fresh interpreters per scenario, and how many run at once.
RUNS = 15
PARALLEL = 2
#: Seconds one interpreter may take: imports, three retries with backoff, and exit.
RUN_TIMEOUT = 60

BARE_BATCH = """\
import asyncio
import os

from producer import HttpRequest, Task, TaskRunner


async def main() -> None:
    async with TaskRunner(mode="local", service_name="exit-check") as runner:
        template = Task(service_name="exit-check", request=HttpRequest(url=os.environ["TRS_EXAMPLE_URL"]), timeout=10)
        batch = await runner.launch(runner.create_task_list(template, 5))
        async for result in batch:
            print(result.task_id, result.error.code if result.error else result.response.status_code)


asyncio.run(main())
"""


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening, so every connect is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}/"


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Using it\n\n```python\n(.*?)```", readme, re.DOTALL)
    assert example is not None
    return example.group(1)


def run_fresh(script: Path, url: str) -> list[subprocess.CompletedProcess[str]]:
    """``script`` in ``RUNS`` fresh interpreters, ``PARALLEL`` at a time."""

    def once(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script)],
            env={**os.environ, "TRS_EXAMPLE_URL": url, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(once, range(RUNS)))


def assert_clean_exits(runs: list[subprocess.CompletedProcess[str]], results: int) -> None:
    aborted = [run for run in runs if run.returncode != 0 or "Fatal Python error" in run.stderr]
    if aborted:
        first = aborted[0]
        pytest.fail(f"{len(aborted)} of {len(runs)} failed; the first with exit {first.returncode}:\n{first.stderr}")
    for run in runs:
        lines = run.stdout.splitlines()
        assert len(lines) == results, run.stdout
        assert all("connect_error" in line for line in lines), run.stdout


def test_readme_example_exits_cleanly_against_a_refused_port(refused_url: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    assert_clean_exits(run_fresh(script, refused_url), results=3)


def test_five_task_batch_exits_cleanly_against_a_refused_port(refused_url: str, tmp_path: Path) -> None:
    script = tmp_path / "batch.py"
    script.write_text(BARE_BATCH)
    assert_clean_exits(run_fresh(script, refused_url), results=5)
