"""The worker's logs are JSON lines with credentials redacted."""

from __future__ import annotations

import json
import logging

import pytest

from consumer.logs import REDACTED, configure_logging, redact, redact_headers


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_header_lists_lose_credential_values() -> None:
    headers = [
        ("Authorization", "Bearer abc.def"),
        ("Cookie", "session=1"),
        ("Proxy-Authorization", "Basic dXNlcg=="),
        ("X-API-Key", "k-123"),
        ("Accept", "application/json"),
    ]

    assert redact_headers(headers) == [
        ("Authorization", REDACTED),
        ("Cookie", REDACTED),
        ("Proxy-Authorization", REDACTED),
        ("X-API-Key", REDACTED),
        ("Accept", "application/json"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def",
        "headers [('authorization', 'Bearer abc.def')]",
        '{"Cookie": "abc.def"}',
        "proxy-authorization=abc.def",
        "x-api-key: abc.def, accept: text/plain",
    ],
)
def test_credentials_in_text_are_redacted(text: str) -> None:
    redacted = redact(text)

    assert "abc.def" not in redacted
    assert REDACTED in redacted


def test_text_without_credentials_is_unchanged() -> None:
    text = "GET http://127.0.0.1/x took 3 ms; accept: text/plain"

    assert redact(text) == text


def test_log_lines_are_json_and_redacted(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    configure_logging(fmt="json", level="DEBUG")
    log = logging.getLogger("consumer.test")

    log.info("sending %s", [("Authorization", "Bearer s3cret")], extra={"headers": {"Cookie": "id=s3cret"}})
    log.debug("plain line")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["level"] for line in lines] == ["INFO", "DEBUG"]
    assert lines[0]["logger"] == "consumer.test"
    assert "timestamp" in lines[0]
    assert "s3cret" not in json.dumps(lines)
    assert lines[0]["headers"] == {"Cookie": REDACTED}
    assert lines[1]["message"] == "plain line"
