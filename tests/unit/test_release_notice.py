"""Release notices on trs-control: their wire form, and how a reader tells them from cancel orders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.errors import InvalidEnvelope
from shared.models import CancelEnvelope, ReleaseNotice
from shared.wire import (
    CONTROL_KIND_CANCEL,
    CONTROL_KIND_RELEASE,
    HEADER_KIND,
    control_kind,
    decode_release,
    encode_cancel,
    encode_release,
)

TOPIC = "trs-svc-http-v1-rcv-6b0f4ade-6b0f4ae2-4531c007829d"


def test_a_release_notice_round_trips_and_says_what_it_is() -> None:
    notice = ReleaseNotice(topics=[TOPIC, "trs-svc-http-v1-rcv-other"])
    value, headers = encode_release(notice)

    assert decode_release(value, headers) == notice
    assert (HEADER_KIND, b"release") in headers
    assert control_kind(headers) == CONTROL_KIND_RELEASE


def test_a_cancel_order_carries_no_kind_and_reads_as_a_cancel_order() -> None:
    _, headers = encode_cancel(CancelEnvelope(batch_id="b", deadline=datetime.now(UTC)))

    assert all(name != HEADER_KIND for name, _ in headers)
    assert control_kind(headers) == CONTROL_KIND_CANCEL
    assert control_kind(None) == CONTROL_KIND_CANCEL


def test_a_kind_this_version_does_not_know_is_passed_on_as_is() -> None:
    assert control_kind([(HEADER_KIND, b"rebalance-hint")]) == "rebalance-hint"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "value: not valid JSON"),
        (b'{"topics": []}', "topics: List should have at least 1 item after validation, not 0"),
        (None, "value: the message has no value"),
    ],
)
def test_a_bad_release_notice_is_refused_with_the_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEnvelope) as raised:
        decode_release(value, [(HEADER_KIND, b"release")])
    assert raised.value.reason == reason
