"""``trs status``'s arithmetic: a partition's lag, a group's, and reply topics' age and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from producer.cluster_status import ClusterStatus, GroupStatus, PartitionLag, ReplyTopic, _lag
from producer.status_report import _span

KEY = ("trs-a-http-v1-send", 0)


@pytest.mark.parametrize(
    ("committed", "ends", "starts", "lag"),
    [
        (4, {KEY: 10}, {KEY: 0}, 6),
        (None, {KEY: 10}, {KEY: 3}, 7),
        (10, {KEY: 10}, {KEY: 0}, 0),
        (12, {KEY: 10}, {KEY: 0}, None),
        (4, None, {KEY: 0}, None),
        (None, {KEY: 10}, None, None),
    ],
)
def test_partition_lag(
    committed: int | None,
    ends: dict[tuple[str, int], int] | None,
    starts: dict[tuple[str, int], int] | None,
    lag: int | None,
) -> None:
    assert _lag(KEY, committed, ends, starts, "m-1") == PartitionLag(
        KEY[0], KEY[1], None if ends is None else ends[KEY], committed, lag, "m-1"
    )


def test_a_groups_lag_is_unknown_when_one_partitions_is() -> None:
    known = PartitionLag("t", 0, 5, 2, 3, None)
    unknown = PartitionLag("t", 1, 1, 4, None, None)

    assert GroupStatus("g", "stable", None, [known, known]).lag == 6
    assert GroupStatus("g", "stable", None, [known, unknown]).lag is None
    assert GroupStatus("g", "empty", [], []).lag == 0


def test_reply_topics_age_and_expiry_in_json() -> None:
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    topic = ReplyTopic("trs-a-http-v1-rcv-x", "a", "x", now - timedelta(minutes=90), now - timedelta(minutes=30))
    status = ClusterStatus("b:9092", now, [], [GroupStatus("g", "stable", None, [])], [topic], ["a note"])

    data = status.to_json()

    assert data["reply_topics"] == [
        {
            "name": "trs-a-http-v1-rcv-x",
            "service": "a",
            "batch_id": "x",
            "created": "2026-01-01T10:30:00+00:00",
            "expires": "2026-01-01T11:30:00+00:00",
            "age_seconds": 5400.0,
            "expires_in_seconds": -1800.0,
        }
    ]
    assert data["groups"] == [{"group_id": "g", "state": "stable", "members": None, "partitions": [], "lag": 0}]
    assert data["notes"] == ["a note"]


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (86400 * 3, "3d")]
)
def test_spans_are_shown_in_their_largest_whole_unit(seconds: int, shown: str) -> None:
    assert _span(timedelta(seconds=seconds)) == shown
