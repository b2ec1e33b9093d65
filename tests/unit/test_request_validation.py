"""What a task's request may carry: the URL and header rules that keep hostile input from any target."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.models import MAX_HEADER_LENGTH, MAX_REQUEST_HEADERS, HttpRequest, Task, TaskEnvelope

SECRET = "hunter2-secret"


def _message(exc: ValidationError) -> str:
    (error,) = exc.errors()
    return str(error["msg"])


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@127.0.0.1:8080/",
        f"https://{SECRET}@h/",
        f"http://user:{SECRET}@/x",
        f"http://evil\\@127.0.0.1/{SECRET}",
    ],
)
def test_a_url_with_user_info_is_rejected_without_repeating_the_password(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url=url)

    assert _message(info.value) == (
        "URL must not carry user info (user:password@): send credentials in an Authorization header"
    )
    assert SECRET not in str(info.value.errors(include_input=False))


def test_an_at_sign_past_the_host_is_no_user_info() -> None:
    assert HttpRequest(url="http://h/mail/a@b?to=c@d#e@f").url == "http://h/mail/a@b?to=c@d#e@f"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "URL scheme must be http or https, got 'file'"),
        ("gopher://127.0.0.1:70/_x", "URL scheme must be http or https, got 'gopher'"),
        ("javascript:alert(1)", "URL scheme must be http or https, got 'javascript'"),
        (f"ftp://user:{SECRET}@h/", "URL scheme must be http or https, got 'ftp'"),
        ("//h/no-scheme", "URL scheme must be http or https"),
    ],
)
def test_an_odd_scheme_is_rejected_naming_only_the_scheme(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url=url)

    assert _message(info.value) == message


@pytest.mark.parametrize("url", ["http://h/a b", "http://h/\x00", "http://h/\x7f", "http://h/a\r\nHost: evil"])
def test_a_url_with_white_space_or_a_control_character_is_rejected(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url=url)

    assert _message(info.value) == "URL contains white space or a control character"


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "a\x01b", "a\x7fb", "\ud800"])
def test_a_header_value_with_a_control_character_is_rejected(value: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url="http://h/", headers=[("X-Evil", value)])

    assert _message(info.value) == (
        "Value error, header 'X-Evil' has a CR, LF or NUL, another control character or a lone surrogate in its value"
    )


def test_a_header_value_may_hold_tabs_and_text_beyond_ascii() -> None:
    request = HttpRequest(url="http://h/", headers=[("X-Note", "a\tb ünïcødé ~")])

    assert request.headers == [("X-Note", "a\tb ünïcødé ~")]


@pytest.mark.parametrize("name", ["X-Evil\n", "X Evil", "X:Evil", "", "Ünï"])
def test_a_header_name_that_is_no_token_is_rejected(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url="http://h/", headers=[(name, "v")])

    assert _message(info.value) == f"Value error, header name {name!r} is not a valid HTTP token"


def test_a_hostile_header_name_is_cut_short_in_the_message() -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url="http://h/", headers=[("\n" * 1000, "v")])

    assert _message(info.value) == f"Value error, header name {chr(10) * 40!r}... is not a valid HTTP token"


def test_a_method_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        HttpRequest(url="http://h/", method="GET\n")

    assert _message(info.value) == "Value error, method 'GET\\n' is not an HTTP method"


def test_more_headers_than_the_cap_are_rejected() -> None:
    HttpRequest(url="http://h/", headers=[("X-N", "v")] * MAX_REQUEST_HEADERS)

    with pytest.raises(ValidationError) as info:
        HttpRequest(url="http://h/", headers=[("X-N", "v")] * 10_000)

    assert _message(info.value) == "List should have at most 100 items after validation, not 10000"


def test_a_header_over_the_length_cap_is_rejected() -> None:
    HttpRequest(url="http://h/", headers=[("X-Big", "v" * (MAX_HEADER_LENGTH - 5))])

    with pytest.raises(ValidationError) as info:
        HttpRequest(url="http://h/", headers=[("X-Big", "v" * MAX_HEADER_LENGTH)])

    assert _message(info.value) == "Value error, header 'X-Big' is over 8192 characters, name and value together"


@pytest.mark.parametrize("topic", [".", ".."])
def test_a_reply_topic_kafka_would_refuse_is_rejected(topic: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskEnvelope(
            batch_id="b1",
            reply_topic=topic,
            deadline=datetime.now(UTC),
            task=Task(service_name="svc", request=HttpRequest(url="http://h/")),
        )

    assert _message(info.value) == f"Value error, {topic!r} is not a legal Kafka topic name"
