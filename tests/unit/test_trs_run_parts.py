"""The parts of ``trs run``: its exit codes, its result lines and what its flags change in each task."""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.exit_codes import ExitCode, batch_exit_code
from producer.overrides import TaskOverrides, parse_header
from producer.result_lines import result_line
from shared.errors import ErrorCode
from shared.models import HttpRequest, HttpResponse, Task, TaskError, TaskResult


def response(status: int) -> TaskResult:
    return TaskResult(task_id=uuid.uuid4(), response=HttpResponse(status_code=status), attempts=1)


def error(code: ErrorCode = ErrorCode.TIMEOUT) -> TaskResult:
    return TaskResult(task_id=uuid.uuid4(), error=TaskError.of(code), attempts=2)


@pytest.mark.parametrize(
    ("results", "check_status", "code"),
    [
        ([], False, ExitCode.OK),
        ([response(200), response(404), response(503)], False, ExitCode.OK),
        ([response(200), response(302)], True, ExitCode.OK),
        ([response(200), response(404)], True, ExitCode.CLIENT_ERROR),
        ([response(503), response(404)], True, ExitCode.SERVER_ERROR),
        ([response(404), response(503)], True, ExitCode.SERVER_ERROR),
        ([response(503), error()], True, ExitCode.TASK_ERROR),
        ([response(200), error(ErrorCode.CANCELLED)], False, ExitCode.TASK_ERROR),
    ],
)
def test_exit_code(results: list[TaskResult], check_status: bool, code: ExitCode) -> None:
    assert batch_exit_code(results, check_status=check_status) is code


def test_the_exit_codes_are_small_and_distinct() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 130]


def test_a_result_line_carries_the_task_and_the_result() -> None:
    task = Task(
        service_name="cli", request=HttpRequest(method="post", url="http://127.0.0.1/x?y"), labels={"line": "3"}
    )
    result = TaskResult(
        task_id=task.id,
        response=HttpResponse(status_code=201, headers=(("X", "1"), ("X", "2")), body=b"\xfb\xff"),
        attempts=1,
        elapsed=0.25,
    )

    line = json.loads(result_line(task, result))

    assert line == {
        "task_id": str(task.id),
        "method": "POST",
        "url": "http://127.0.0.1/x?y",
        "labels": {"line": "3"},
        "response": {"status_code": 201, "headers": [["X", "1"], ["X", "2"]], "body": "+/8="},
        "error": None,
        "attempts": 1,
        "elapsed": 0.25,
    }
    assert base64.b64decode(line["response"]["body"]) == b"\xfb\xff"


def test_an_error_line_and_a_header_that_is_not_ascii() -> None:
    task = Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1/"))
    failed = TaskResult(
        task_id=task.id, error=TaskError(code=ErrorCode.RETRIES_EXHAUSTED, message="m", status_code=503)
    )
    odd = TaskResult(task_id=task.id, response=HttpResponse(status_code=200, headers=(("X", "caf\udce9"),)))

    assert json.loads(result_line(task, failed))["error"] == {
        "code": "retries_exhausted",
        "message": "m",
        "status_code": 503,
    }
    assert result_line(task, odd).isascii()


def test_overrides_replace_timeout_retries_and_headers_of_that_name() -> None:
    shared = Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1/")).policy
    tasks = [
        Task(
            service_name="cli",
            request=HttpRequest(url="http://127.0.0.1/", headers=[("x-who", "file"), ("Keep", "1")]),
            timeout=60,
        )
        for _ in range(3)
    ]

    TaskOverrides(timeout=2, retries=0, headers=(("X-Who", "cli"), ("X-Who", "again"))).apply(tasks)

    assert [t.timeout for t in tasks] == [2, 2, 2]
    assert [t.policy.retry.retries for t in tasks] == [0, 0, 0]
    assert tasks[0].policy is tasks[1].policy is tasks[2].policy
    assert shared.retry.retries == 3
    assert tasks[0].request.headers == [("Keep", "1"), ("X-Who", "cli"), ("X-Who", "again")]


def test_no_override_leaves_a_task_as_it_is() -> None:
    task = Task(service_name="cli", request=HttpRequest(url="http://127.0.0.1/", headers=[("A", "1")]), timeout=7)
    before = task.model_dump()

    TaskOverrides().apply([task])

    assert task.model_dump() == before


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("X-No-Colon", "'X-No-Colon' is not a header: write it as 'Name: value'"),
        ("Bad Name: v", "header name 'Bad Name' is not a valid HTTP token"),
        ("X: a\x00b", "header 'X' has a CR, LF or NUL"),
    ],
)
def test_a_bad_header_flag_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_header(text)

    assert str(info.value).startswith(problem)


def test_a_header_flag_is_split_at_its_first_colon_and_trimmed() -> None:
    assert parse_header("Authorization:  Bearer a:b ") == ("Authorization", "Bearer a:b")


def test_the_readme_and_the_help_list_every_exit_code() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("| exit code | when |", 1)[1].split("\n\n", 1)[0]
    help_text = CliRunner().invoke(main, ["run", "--help"]).output.split("Exit codes:", 1)[1].split("Options:")[0]

    assert re.findall(r"^\| (\d+) \|", table, re.MULTILINE) == [str(int(c)) for c in ExitCode]
    assert re.findall(r"^ +(\d+) {2,}\S", help_text, re.MULTILINE) == [str(int(c)) for c in ExitCode]
