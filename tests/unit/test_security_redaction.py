"""Credentials stay out of reprs, validation errors, DLQ reasons and log lines (no broker needed)."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from consumer.logs import configure_logging
from shared.errors import InvalidEnvelope
from shared.models import HttpRequest, HttpResponse, Task, TaskEnvelope, TaskResult
from shared.redaction import REDACTED, is_secret_header, redact, redact_headers, redact_url
from shared.wire import decode_task, encode_task

SECRET = "s3cr3t-canary"


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "proxy-authorization",
        "Cookie",
        "Set-Cookie",
        "X-API-Key",
        "Api-Key",
        "apikey",
        "X-Auth-Token",
        "X-Vault-Token",
        "X-Session-Id",
        "X-Client-Secret",
    ],
)
def test_credential_header_names(name: str) -> None:
    assert is_secret_header(name)
    assert redact_headers([(name, SECRET)]) == [(name, REDACTED)]


@pytest.mark.parametrize("name", ["Accept", "Content-Type", "User-Agent", "Host", "X-Request-Id"])
def test_ordinary_header_names_keep_their_values(name: str) -> None:
    assert redact_headers({name: "v"}) == [(name, "v")]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"http://user:{SECRET}@host/x", "http://user:[redacted]@host/x"),
        (f"https://{SECRET}@github.com/org/repo", "https://[redacted]@github.com/org/repo"),
        (f"http://user:pa@ss:{SECRET}@host:8080/?q=1", "http://user:[redacted]@host:8080/?q=1"),
        ("http://host/x?next=http://a@b", "http://host/x?next=http://[redacted]@b"),
        ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x"),
    ],
)
def test_urls_lose_their_user_info(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {SECRET}",
        f"headers [('authorization', 'Bearer {SECRET}')]",
        f"[('X-Auth-Token', b'{SECRET}')]",
        f'{{"Cookie": "{SECRET}"}}',
        f"Cookie: a=1; b={SECRET}",
        f"proxy-authorization={SECRET}",
        f"x-api-key: {SECRET}, accept: text/plain",
        f"sasl.password={SECRET}",
        f"('Set-Cookie', 'it\\'s {SECRET}')",
        f"error sending request for url (http://user:{SECRET}@10.0.0.1/)",
    ],
)
def test_credentials_in_text_are_redacted(text: str) -> None:
    redacted = redact(text)

    assert SECRET not in redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "text",
    [
        "GET http://127.0.0.1/x took 3 ms; accept: text/plain",
        "session.timeout.ms=6000 max.poll.interval.ms=6000",
        "sent trs-a-http-v1-send[0]@12 to trs-dlq: value: not valid JSON",
    ],
)
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text


def _request() -> HttpRequest:
    # Validation refuses a URL with user info; built without it, the repr must still hide the password.
    return HttpRequest.model_construct(
        url=f"http://user:{SECRET}-url@127.0.0.1/x",
        headers=[("Authorization", f"Bearer {SECRET}-auth"), ("X-API-Key", f"{SECRET}-key"), ("Accept", "a/b")],
    )


def test_reprs_of_requests_tasks_envelopes_and_results_hold_no_credential() -> None:
    request = _request()
    task = Task(service_name="svc", request=request)
    envelope = TaskEnvelope(
        batch_id="b", reply_topic="t", deadline=datetime.now(UTC) + timedelta(seconds=30), task=task
    )
    response = HttpResponse(status_code=200, headers=(("Set-Cookie", f"id={SECRET}-cookie"), ("Server", "x")))
    result = TaskResult(task_id=uuid.uuid4(), response=response)

    for shown in (repr(request), str(request), repr(task), str(task), repr(envelope), repr(response), repr(result)):
        assert SECRET not in shown, shown
    assert "'Accept', 'a/b'" in repr(request)
    assert "user:[redacted]@127.0.0.1" in repr(request)
    # The data itself is untouched: only what is shown changes.
    assert request.header("authorization") == f"Bearer {SECRET}-auth"
    assert SECRET in envelope.model_dump_json()


@pytest.mark.parametrize(
    "request_input",
    [
        {"url": f"ftp://user:{SECRET}@host/"},
        {"url": f"http://user:{SECRET}@host/ x"},
        {"url": f"http://user:{SECRET}@"},
        {"url": "http://h/", "headers": [["Authorization", f"{SECRET}\r\n"]]},
        {"url": "http://h/", "headers": [[f"Authorization: Bearer {SECRET}", "v"]]},
        # A missing field shows the whole input of its model.
        {"headers": [["X-API-Key", SECRET]]},
    ],
)
def test_validation_errors_never_echo_a_credential(request_input: dict[str, Any]) -> None:
    texts = []
    for build in (
        lambda: HttpRequest.model_validate(request_input),
        lambda: Task.model_validate({"service_name": "svc", "request": request_input}),
        lambda: Task.model_validate_json(json.dumps({"service_name": "svc", "request": request_input})),
    ):
        with pytest.raises(ValidationError) as info:
            build()
        texts += [str(info.value), repr(info.value), json.dumps([e["msg"] for e in info.value.errors()])]

    assert all(SECRET not in text for text in texts), texts


def test_an_assignment_that_fails_validation_does_not_echo_it() -> None:
    task = Task(service_name="svc", request=HttpRequest(url="http://h/"))

    with pytest.raises(ValidationError) as info:
        task.request = {"url": f"ftp://user:{SECRET}@h/"}  # type: ignore[assignment]

    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", f"ftp://user:{SECRET}@host/"),
        ("headers", [["Authorization", f"Bearer {SECRET}\r\n"]]),
        ("headers", [[f"Cookie: {SECRET}", "x"]]),
    ],
)
def test_a_dead_letter_reason_holds_no_credential(field: str, value: object) -> None:
    envelope = TaskEnvelope(
        batch_id="b",
        reply_topic="trs-svc-http-v1-rcv-b",
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        task=Task(service_name="svc", request=HttpRequest(url="http://h/")),
    )
    raw, headers = encode_task(envelope)
    broken = json.loads(raw)
    broken["task"]["request"][field] = value

    with pytest.raises(InvalidEnvelope) as info:
        decode_task(json.dumps(broken).encode(), headers)

    assert f"task.request.{field}" in info.value.reason
    assert SECRET not in info.value.reason
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_worker_log_lines_redact_urls_tracebacks_and_stacks(
    fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    configure_logging(fmt=fmt, level="DEBUG")
    log = logging.getLogger("consumer.test")

    log.info("calling %s", f"http://user:{SECRET}@10.0.0.1/")
    try:
        raise RuntimeError(f"failed with Authorization: Bearer {SECRET} for http://u:{SECRET}@h/")
    except RuntimeError:
        log.exception("unexpected failure")
    log.warning("where: %s", f"X-Auth-Token={SECRET}", stack_info=True)
    log.debug("request %r", _request())

    err = capsys.readouterr().err
    assert "unexpected failure" in err
    assert "RuntimeError: failed with Authorization: [redacted]" in err.replace("\\n", "\n")
    assert "Stack (most recent call last)" in err
    assert SECRET not in err
