"""When to retry an attempt and how long to wait first: two pure functions.

An attempt's outcome is either a status code or the error it raised. Retryable are connection
errors, per-attempt timeouts, 429 and every 5xx except 501 (Not Implemented never changes).
The delay before retry ``n`` (1-based) is ``backoff_initial * 2**(n-1)`` capped at ``backoff_max``,
then jittered into its upper half so a fleet of retries doesn't arrive in step. A ``Retry-After``
from the server replaces the computed delay.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shared.errors import ConnectFailed, TaskFailed, TaskTimeout
from shared.models import RetryPolicy

__all__ = ["backoff_delay", "parse_retry_after", "should_retry"]

Outcome = int | TaskFailed
_RNG = random.Random()


def _retryable(outcome: Outcome) -> bool:
    if isinstance(outcome, int):
        return outcome == 429 or (500 <= outcome <= 599 and outcome != 501)
    return isinstance(outcome, ConnectFailed | TaskTimeout)


def should_retry(attempt: int, outcome: Outcome, policy: RetryPolicy) -> bool:
    """Whether attempt number ``attempt`` (1-based) with ``outcome`` earns another attempt."""
    return (attempt <= policy.retries) and _retryable(outcome)


def backoff_delay(
    retry: int,
    policy: RetryPolicy,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``retry`` (1-based)."""
    if (retry_after is not None) and policy.honor_retry_after:
        return max(0.0, retry_after)
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (retry - 1))
    return ceiling / 2 + (rng or _RNG).uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date. ``None`` if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
