"""The reply reader's gap tracker: an offset it was shown past is read again, and a hole is let be."""

from __future__ import annotations

import logging

import pytest

from producer.reply_gaps import MAX_REREADS, REREAD_DELAY, OffsetGaps

TOPIC = "trs-svc-http-v1-rcv-b1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gaps(clock: Clock) -> OffsetGaps:
    tracker = OffsetGaps(clock)
    tracker.start(TOPIC, 0, 0)
    tracker.start(TOPIC, 1, 0)
    return tracker


def read(gaps: OffsetGaps, offsets: range | list[int], partition: int = 0) -> None:
    for offset in offsets:
        gaps.seen(TOPIC, partition, offset)


def test_contiguous_offsets_are_never_read_again(gaps: OffsetGaps, clock: Clock) -> None:
    read(gaps, range(50))
    read(gaps, range(20), partition=1)
    clock.now += 60

    assert gaps.due() == []


def test_a_skipped_offset_is_read_again_from_where_it_was_after_the_delay(gaps: OffsetGaps, clock: Clock) -> None:
    # The broker showed the reader offset 4 while the record at 3 was not stored yet.
    read(gaps, [0, 1, 2, 4, 5, 6])

    assert gaps.due() == []
    clock.now += REREAD_DELAY
    assert gaps.due() == [(TOPIC, 0, 3)]
    assert gaps.due() == []

    # Read again from 3, the record is there now: nothing more to do.
    read(gaps, [3, 4, 5, 6, 7])
    clock.now += 60
    assert gaps.due() == []


def test_a_skipped_first_offset_is_read_again(gaps: OffsetGaps, clock: Clock) -> None:
    read(gaps, [1, 2])
    clock.now += REREAD_DELAY

    assert gaps.due() == [(TOPIC, 0, 0)]


def test_gaps_above_the_first_are_covered_by_its_read_again_and_found_again_if_still_there(
    gaps: OffsetGaps, clock: Clock
) -> None:
    read(gaps, [0, 2, 3, 5, 6])
    clock.now += REREAD_DELAY
    assert gaps.due() == [(TOPIC, 0, 1)]

    # 1 came; 4 is still missing, a gap of its own now.
    read(gaps, [1, 2, 3, 5, 6])
    clock.now += REREAD_DELAY
    assert gaps.due() == [(TOPIC, 0, 4)]


def test_each_partition_has_its_own_gaps(gaps: OffsetGaps, clock: Clock) -> None:
    read(gaps, [0, 2])
    read(gaps, [0, 1, 2, 3], partition=1)
    clock.now += REREAD_DELAY

    assert gaps.due() == [(TOPIC, 0, 1)]


def test_a_hole_the_broker_never_fills_is_read_again_a_bounded_number_of_times_then_let_be(
    gaps: OffsetGaps, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    read(gaps, [0, 1, 3, 4])
    seeks = []
    for attempt in range(MAX_REREADS):
        clock.now += REREAD_DELAY * 2**attempt
        seeks += gaps.due()
        read(gaps, range(3, 6 + attempt))

    assert seeks == [(TOPIC, 0, 2)] * MAX_REREADS
    clock.now += 60
    assert gaps.due() == []
    assert f"offset 2 of {TOPIC}[0] never came after {MAX_REREADS} reads: the broker left a hole there" in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING

    # Reading goes on as usual past the hole.
    after = 6 + MAX_REREADS
    read(gaps, [after, after + 1])
    clock.now += REREAD_DELAY
    assert gaps.due() == [(TOPIC, 0, after - 1)]


def test_a_read_again_waits_longer_each_time_the_gap_is_still_there(gaps: OffsetGaps, clock: Clock) -> None:
    read(gaps, [0, 2])
    clock.now += REREAD_DELAY
    assert gaps.due() == [(TOPIC, 0, 1)]
    read(gaps, [2])

    clock.now += REREAD_DELAY
    assert gaps.due() == []
    clock.now += REREAD_DELAY
    assert gaps.due() == [(TOPIC, 0, 1)]


def test_a_topic_let_go_of_has_no_gaps_and_an_unknown_one_is_ignored(gaps: OffsetGaps, clock: Clock) -> None:
    read(gaps, [0, 5])
    gaps.forget(TOPIC)
    gaps.seen("trs-other", 0, 7)
    gaps.seen(None, None, None)
    clock.now += 60

    assert gaps.due() == []


def test_a_partition_started_past_zero_expects_its_start_offset(clock: Clock) -> None:
    gaps = OffsetGaps(clock)
    gaps.start("trs-control", 0, 40)
    gaps.seen("trs-control", 0, 40)
    gaps.seen("trs-control", 0, 42)
    clock.now += REREAD_DELAY

    assert gaps.due() == [("trs-control", 0, 41)]
