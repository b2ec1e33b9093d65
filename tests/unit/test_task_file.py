"""Task files are strict: unknown keys, ids that aren't UUIDs and a second service are errors, each
bad line is reported in one read, up to a cap, and every message is formatted."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from producer.task_file import ID_NOT_UUID, MAX_REPORTED, TaskFileError, parse_tasks


def line(url: str = "http://127.0.0.1/", service: str = "cli", **fields: Any) -> str:
    return json.dumps({"service_name": service, "request": {"url": url}, **fields})


def problems(lines: list[str], **options: Any) -> list[str]:
    with pytest.raises(TaskFileError) as info:
        parse_tasks(lines, name="t.jsonl", **options)
    return str(info.value).splitlines()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"timout": 1}, "unknown key 'timout' (did you mean 'timeout'?)"),
        ({"policy": {"retry": {"retrys": 1}}}, "unknown key 'policy.retry.retrys' (did you mean 'retries'?)"),
        ({"policy": {"transport": {"zzz": 1}}}, "unknown key 'policy.transport.zzz'"),
        (
            {"request": {"url": "http://127.0.0.1/", "header": []}},
            "unknown key 'request.header' (did you mean 'headers'?)",
        ),
    ],
)
def test_an_unknown_key_is_an_error_naming_the_line_and_the_key(fields: dict[str, Any], reason: str) -> None:
    assert problems([line(), line(**fields)]) == [f"t.jsonl:2: {reason}"]


def test_an_id_that_is_not_a_uuid_points_to_labels() -> None:
    assert problems([line(id="line-1")]) == [f"t.jsonl:1: {ID_NOT_UUID}"]


def test_a_second_service_is_an_error() -> None:
    assert problems([line(), line(service="other")]) == [
        "t.jsonl:2: service_name 'other' differs from the batch's 'cli': a batch runs under one service"
        " (split the file, or run each part with --service)"
    ]
    assert problems([line(service="cli_a")], service="cli-b")[0].startswith(
        "t.jsonl:1: service_name 'cli-a' differs from the batch's 'cli-b'"
    )


def test_every_bad_line_is_reported_up_to_the_cap() -> None:
    bad = [line(timout=1)] * (MAX_REPORTED + 5)

    reported = problems([line(), *bad])

    assert len(reported) == MAX_REPORTED + 1
    assert reported[0] == "t.jsonl:2: unknown key 'timout' (did you mean 'timeout'?)"
    assert reported[MAX_REPORTED - 1].startswith(f"t.jsonl:{MAX_REPORTED + 1}: ")
    assert reported[-1] == "and 5 more bad lines"


def test_every_error_of_a_line_is_in_its_report() -> None:
    assert problems([line("ftp://127.0.0.1/", timeout=-1)]) == [
        "t.jsonl:1: request.url: URL scheme must be http or https, got 'ftp'; timeout: Input should be greater than 0"
    ]


@pytest.mark.parametrize(
    "request_fields",
    [
        {"url": "ftp://127.0.0.1/"},
        {"url": "127.0.0.1/"},
        {"url": "http://a b/"},
        {"url": "http://user:secret@127.0.0.1/"},
        {"url": "http://:80/"},
        {"url": "http://127.0.0.1/", "method": "GE T"},
        {"url": "http://127.0.0.1/", "headers": [["Bad Name", "v"]]},
        {"url": "http://127.0.0.1/", "headers": [["X", "a\nb"]]},
        {"url": "http://127.0.0.1/", "headers": [["X", "v" * 9000]]},
        {"url": "http://127.0.0.1/", "body": "not base64!"},
    ],
)
def test_every_message_is_formatted(request_fields: dict[str, Any]) -> None:
    (reported,) = problems([json.dumps({"service_name": "cli", "request": request_fields})])

    assert not re.search(r"\{[a-z_]*(![rs])?\}", reported), reported
    assert "Value error," not in reported
    assert "secret" not in reported


def test_each_task_is_labelled_with_its_line_and_keeps_its_own_labels() -> None:
    tasks = parse_tasks(["", line(labels={"host": "web-1"}), line(labels={"line": "mine"})])

    assert [t.labels for t in tasks] == [{"line": "2", "host": "web-1"}, {"line": "mine"}]


def test_bad_json_is_reported_with_the_other_bad_lines() -> None:
    assert problems(["{not json", "[1]", line()]) == [
        "t.jsonl:1: not valid JSON: Expecting property name enclosed in double quotes",
        "t.jsonl:2: task: Input should be an object",
    ]
