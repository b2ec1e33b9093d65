"""The retry decision and the backoff delay: pure functions, checked as truth tables."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.engine.retry import backoff_delay, parse_retry_after, should_retry
from shared.errors import ConnectFailed, InternalError, ResponseTooLarge, TaskTimeout, TlsFailed
from shared.models import RetryPolicy

POLICY = RetryPolicy(retries=3, backoff_initial=0.1, backoff_max=5.0)


@pytest.mark.parametrize(
    ("outcome", "retryable"),
    [
        (200, False),
        (201, False),
        (301, False),
        (400, False),
        (404, False),
        (429, True),
        (500, True),
        (501, False),
        (502, True),
        (503, True),
        (504, True),
        (599, True),
        (ConnectFailed("x"), True),
        (TaskTimeout("x"), True),
        (TlsFailed("x"), False),
        (ResponseTooLarge("x"), False),
        (InternalError("x"), False),
    ],
)
def test_which_outcomes_are_retried(outcome: int | Exception, retryable: bool) -> None:
    assert should_retry(1, outcome, POLICY) is retryable  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "expected"), [(1, True), (2, True), (3, True), (4, False), (5, False)])
def test_retries_three_means_four_attempts(attempt: int, expected: bool) -> None:
    assert should_retry(attempt, 503, POLICY) is expected


def test_zero_retries_never_retries() -> None:
    assert should_retry(1, 503, RetryPolicy(retries=0)) is False


@given(st.integers(1, 30), st.integers(0, 2**32))
def test_backoff_is_exponential_jittered_and_capped(retry: int, seed: int) -> None:
    delay = backoff_delay(retry, POLICY, rng=random.Random(seed))

    ceiling = min(POLICY.backoff_max, POLICY.backoff_initial * 2 ** (retry - 1))
    assert ceiling / 2 <= delay <= ceiling
    assert delay <= POLICY.backoff_max


def test_retry_after_replaces_the_backoff_unless_disabled() -> None:
    assert backoff_delay(1, POLICY, retry_after=7.0) == 7.0
    ignoring = RetryPolicy(honor_retry_after=False, backoff_initial=0.1)
    assert backoff_delay(1, ignoring, retry_after=7.0) <= 0.1


def test_retry_after_parses_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")

    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after(later, now) == 90.0
    assert parse_retry_after("Mon, 01 Jan 2001 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
