"""``trs run`` as a Unix tool: result lines alone on stdout, exit codes, Ctrl-C, flags that override
the file, plain URL lists, strict task files and ``--version``."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from producer.dev.embedded_broker import free_port
from producer.task_file import ID_NOT_UUID
from tests.http_target import HttpTarget
from tests.remote_pools import RemotePools
from tests.trs_cli import trs, trs_command, trs_env
from tests.worker_process import ROOT

pytestmark = pytest.mark.integration


def task_line(url: str, service: str = "cli", **fields: Any) -> str:
    return json.dumps({"service_name": service, "request": {"url": url}, **fields}) + "\n"


def result_lines(stdout: str) -> list[dict[str, Any]]:
    """Every line of ``stdout`` as JSON: fails on any line that isn't."""
    return [json.loads(line) for line in stdout.splitlines()]


def test_stdout_carries_only_result_lines_and_stderr_the_summary(target: HttpTarget, tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text(
        task_line(f"{target.http}/ok", labels={"host": "web-1"})
        + "\n"
        + task_line(f"{target.http}/status/404", labels={"line": "mine"})
    )

    default = trs("run", str(source))
    dash = trs("run", str(source), "--output", "-")

    for completed in (default, dash):
        assert completed.returncode == 0, completed.stderr
        lines = sorted(result_lines(completed.stdout), key=lambda line: line["url"])
        assert [(line["method"], line["url"], line["labels"]) for line in lines] == [
            ("GET", f"{target.http}/ok", {"line": "1", "host": "web-1"}),
            ("GET", f"{target.http}/status/404", {"line": "mine"}),
        ]
        assert [line["response"]["status_code"] for line in lines] == [200, 404]
        assert "2 tasks in" in completed.stderr
        assert "tasks in" not in completed.stdout


@pytest.mark.parametrize(
    ("paths", "flags", "code"),
    [
        (["/ok", "/status/404", "/status/503"], [], 0),
        (["/ok", "/status/404"], ["--check-status"], 4),
        (["/ok", "/status/404", "/status/503"], ["--check-status"], 5),
        (["/ok", "/status/503", "CLOSED"], ["--check-status"], 3),
        (["/ok", "CLOSED"], [], 3),
        (["/ok", "/status/302"], ["--check-status"], 0),
    ],
)
def test_exit_codes(target: HttpTarget, paths: list[str], flags: list[str], code: int) -> None:
    closed = f"http://127.0.0.1:{free_port()}/"
    urls = [closed if path == "CLOSED" else f"{target.http}{path}" for path in paths]

    completed = trs("run", *(arg for url in urls for arg in ("--url", url)), "--retries", "0", *flags)

    assert completed.returncode == code, completed.stderr
    assert len(result_lines(completed.stdout)) == len(urls)


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_ctrl_c_cancels_writes_the_unfinished_as_cancelled_and_exits_130(
    mode: str, target: HttpTarget, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    service, extra = "cli", []
    if mode == "remote":
        pools: RemotePools = request.getfixturevalue("remote_pools")
        service, extra = pools.service(()), ["--bootstrap-servers", pools.bootstrap]
    source = tmp_path / "tasks.jsonl"
    source.write_text(task_line(f"{target.http}/ok", service) + task_line(f"{target.http}/sleep?s=60", service) * 3)
    running = subprocess.Popen(
        trs_command("run", str(source), "--mode", mode, *extra),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=trs_env(),
    )
    assert running.stdout is not None
    first = running.stdout.readline()
    assert first, "trs run ended before its first result"

    running.send_signal(signal.SIGINT)
    rest, stderr = running.communicate(timeout=60)

    assert running.returncode == 130, stderr
    lines = result_lines(first + rest)
    assert sorted(line["labels"]["line"] for line in lines) == ["1", "2", "3", "4"]
    cancelled = [line for line in lines if line["error"] is not None]
    assert [(line["url"], line["error"]["code"]) for line in cancelled] == [
        (f"{target.http}/sleep?s=60", "cancelled")
    ] * 3
    assert "interrupted: cancelling the batch" in stderr
    summary = " ".join(stderr.split())
    assert "4 tasks in" in summary and "(interrupted: the batch was cancelled)" in summary
    assert re.search(r"cancelled │ - │ 3", summary), stderr


def test_flags_override_the_file(target: HttpTarget, tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    headers = [["X-Who", "file"], ["x-who", "file again"], ["X-Kept", "yes"]]
    source.write_text(
        json.dumps({"service_name": "cli", "request": {"url": f"{target.http}/echo", "headers": headers}})
        + "\n"
        + task_line(f"{target.http}/sleep?s=30", timeout=60)
        + task_line(f"{target.http}/status/503?key=override", policy={"retry": {"retries": 0, "backoff_initial": 0.01}})
    )

    completed = trs(
        "run", str(source), "--timeout", "1", "--retries", "2", "-H", "X-Who: cli", "--header", "X-New:  v "
    )

    assert completed.returncode == 3, completed.stderr
    by_line = {line["labels"]["line"]: line for line in result_lines(completed.stdout)}
    echoed = json.loads(base64.b64decode(by_line["1"]["response"]["body"]))
    sent = [(name.lower(), value) for name, value in echoed["headers"] if name.lower().startswith("x-")]
    assert sorted(sent) == [("x-kept", "yes"), ("x-new", "v"), ("x-who", "cli")]
    assert by_line["2"]["error"]["code"] == "timeout"
    assert by_line["2"]["elapsed"] < 10
    assert by_line["3"]["error"]["code"] == "retries_exhausted"
    assert by_line["3"]["attempts"] == 3


def test_bad_flags_are_usage_errors(tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text(task_line("http://127.0.0.1/"))

    header = trs("run", str(source), "-H", "X-No-Colon")
    token = trs("run", str(source), "-H", "Bad Name: v")
    neither = trs("run")
    both = trs("run", str(source), "--url", "http://127.0.0.1/")
    url = trs("run", "--url", "ftp://127.0.0.1/")
    service = trs("run", "--url", "http://127.0.0.1/", "--service", "Not OK!")

    assert [c.returncode for c in (header, token, neither, both, url, service)] == [2] * 6
    assert (
        "Invalid value for '--header' / '-H': 'X-No-Colon' is not a header: write it as 'Name: value'" in header.stderr
    )
    assert "header name 'Bad Name' is not a valid HTTP token" in token.stderr
    assert "Error: give either TASKS.jsonl, or URLs with --url and --urls" in neither.stderr
    assert "Error: give either TASKS.jsonl, or URLs with --url and --urls" in both.stderr
    assert "Invalid value for '--url': 'ftp://127.0.0.1/': URL scheme must be http or https, got 'ftp'" in url.stderr
    assert "Invalid value for '--service': service name 'Not OK!' can't form a Kafka topic name" in service.stderr


def test_urls_from_a_file_and_from_stdin(target: HttpTarget, tmp_path: Path) -> None:
    listing = f"# health checks\n{target.http}/ok\n\n  {target.http}/status/404  \n#{target.http}/never\n"
    url_file = tmp_path / "urls.txt"
    url_file.write_text(listing)

    from_file = trs("run", "--urls", str(url_file), "--url", f"{target.http}/ok?extra")
    from_stdin = trs("run", "--urls", "-", input=listing)

    assert from_file.returncode == 0, from_file.stderr
    assert sorted((line["url"], line["labels"]) for line in result_lines(from_file.stdout)) == [
        (f"{target.http}/ok", {"line": "2"}),
        (f"{target.http}/ok?extra", {"arg": "1"}),
        (f"{target.http}/status/404", {"line": "4"}),
    ]
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert sorted(line["labels"]["line"] for line in result_lines(from_stdin.stdout)) == ["2", "4"]


def test_a_url_file_reports_every_bad_line() -> None:
    completed = trs("run", "--urls", "-", input="http://127.0.0.1/\nftp://127.0.0.1/\nhttp://a b/\n")

    assert completed.returncode == 1
    assert "Error: <stdin>:2: URL scheme must be http or https, got 'ftp'\n<stdin>:3: URL contains white space" in (
        completed.stderr
    )
    assert completed.stdout == ""


def test_a_url_list_with_no_urls_is_refused(tmp_path: Path) -> None:
    completed = trs("run", "--urls", "-", input="# nothing\n\n")

    assert completed.returncode == 1
    assert "Error: <stdin> holds no tasks" in completed.stderr


def test_a_task_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_bytes(task_line("http://127.0.0.1/").encode() + b"\xff\xfe\n")

    completed = trs("run", str(source))

    assert completed.returncode == 1
    assert f"Error: {source} is not UTF-8 text: invalid start byte at byte " in completed.stderr


def test_a_task_file_reports_every_bad_line_in_one_run(tmp_path: Path) -> None:
    source = tmp_path / "tasks.jsonl"
    source.write_text(
        task_line("http://127.0.0.1/ok", timout=1)
        + task_line("http://127.0.0.1/ok")
        + task_line("http://127.0.0.1/ok", id="line-1")
        + task_line("http://127.0.0.1/ok", service="other")
        + task_line("ftp://127.0.0.1/ok")
    )

    completed = trs("run", str(source))

    assert completed.returncode == 1
    assert completed.stderr.splitlines() == [
        f"Error: {source}:1: unknown key 'timout' (did you mean 'timeout'?)",
        f"{source}:3: {ID_NOT_UUID}",
        f"{source}:4: service_name 'other' differs from the batch's 'cli': a batch runs under one service"
        " (split the file, or run each part with --service)",
        f"{source}:5: request.url: URL scheme must be http or https, got 'ftp'",
    ]


def test_version() -> None:
    completed = trs("--version")

    assert completed.returncode == 0
    assert re.fullmatch(r"trs, version \d+\.\d+\.\d+\S*\n", completed.stdout), completed.stdout
