"""Whether a record may start: a stall puts ownership in doubt until a proof; a revoke lets running ones finish."""

from __future__ import annotations

from consumer.offsets import Commit, OffsetTracker, Ownership
from consumer.reminders import Reminder

TP = ("trs-svc-http-v1-send", 0)
OTHER = ("trs-svc-http-v1-send", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _tracker(clock: Clock) -> tuple[OffsetTracker, int]:
    tracker = OffsetTracker(stall_after=3.0, clock=clock)
    tracker.assign([TP])
    epoch = tracker.track(TP, 0)
    assert epoch is not None
    tracker.track(TP, 1)
    tracker.beat()
    return tracker, epoch


def test_a_record_of_the_current_assignment_starts_and_one_of_a_revoked_one_does_not() -> None:
    tracker, epoch = _tracker(Clock())

    assert tracker.begin(TP, epoch, 0) is Ownership.OWNED
    tracker.revoke([TP])
    tracker.assign([TP])
    assert tracker.begin(TP, epoch, 1) is Ownership.STALE
    assert tracker.begin(OTHER, epoch, 1) is Ownership.STALE


def test_beats_closer_than_the_stall_threshold_leave_ownership_alone() -> None:
    clock = Clock()
    tracker, epoch = _tracker(clock)

    for _ in range(10):
        clock.now += 2.9
        assert tracker.beat() is None
    assert not tracker.in_doubt
    assert tracker.begin(TP, epoch, 0) is Ownership.OWNED


def test_a_stall_puts_ownership_in_doubt_until_a_proof_for_it() -> None:
    clock = Clock()
    tracker, epoch = _tracker(clock)

    clock.now += 9.0
    stalled = tracker.beat()

    assert stalled == 9.0
    assert tracker.in_doubt
    assert tracker.begin(TP, epoch, 0) is Ownership.IN_DOUBT
    stall, commits = tracker.doubt()
    assert commits == [Commit(TP[0], TP[1], 0, epoch)]
    assert tracker.confirm(stall) is True
    assert tracker.begin(TP, epoch, 0) is Ownership.OWNED


def test_a_runner_that_asks_before_the_fetcher_beats_again_sees_the_stall_in_the_beat_s_age() -> None:
    # SIGCONT wakes every thread at once: the event loop may ask before the fetcher beats.
    clock = Clock()
    tracker, epoch = _tracker(clock)

    clock.now += 9.0

    assert tracker.begin(TP, epoch, 0) is Ownership.IN_DOUBT
    assert not tracker.in_doubt


def test_a_proof_for_an_older_stall_does_not_end_a_newer_one() -> None:
    clock = Clock()
    tracker, epoch = _tracker(clock)
    clock.now += 9.0
    tracker.beat()
    first, _ = tracker.doubt()

    clock.now += 9.0
    tracker.beat()

    assert tracker.confirm(first) is False
    assert tracker.begin(TP, epoch, 0) is Ownership.IN_DOUBT
    second, _ = tracker.doubt()
    assert tracker.confirm(second) is True


def test_a_revoke_ends_the_doubt_for_its_partition_records_as_stale() -> None:
    clock = Clock()
    tracker, epoch = _tracker(clock)
    clock.now += 9.0
    tracker.beat()

    tracker.revoke([TP])

    assert tracker.begin(TP, epoch, 0) is Ownership.STALE
    assert tracker.doubt()[1] == []


def test_a_revoking_partition_starts_nothing_and_counts_what_runs_until_it_is_done() -> None:
    tracker, epoch = _tracker(Clock())
    tracker.track(TP, 2)
    tracker.begin(TP, epoch, 0)
    tracker.begin(TP, epoch, 1)

    tracker.stop_starting([TP])

    assert tracker.begin(TP, epoch, 2) is Ownership.STALE
    assert tracker.running([TP]) == 2
    tracker.mark_done(TP, 0, epoch)
    tracker.mark_done(TP, 1, epoch)
    assert tracker.running([TP]) == 0
    # The record that never started holds the commit: its next owner runs it.
    assert tracker.revoke([TP]) == [Commit(TP[0], TP[1], 2, epoch)]


def test_a_reminder_is_due_at_once_then_every_interval_and_at_once_again_after_a_reset() -> None:
    clock = Clock()
    reminder = Reminder(30.0, clock)

    due = []
    for _ in range(7):
        due.append(reminder.due())
        clock.now += 10
    reminder.reset()

    assert due == [True, False, False, True, False, False, True]
    assert reminder.due() is True
