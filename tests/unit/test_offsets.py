"""The commit offset under out-of-order completion, against a model that can't be wrong by construction."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.offsets import Commit, OffsetTracker, Ownership, PartitionOffsets

TP = ("trs-svc-http-v1-send", 0)


def test_nothing_seen_means_nothing_to_commit() -> None:
    state = PartitionOffsets(epoch=1)

    assert state.next_commit_offset() is None
    assert state.commit_due() is None


def test_commit_stops_at_the_lowest_unfinished_offset() -> None:
    state = PartitionOffsets(epoch=1)
    for offset in (10, 11, 12, 13):
        state.track(offset)

    state.mark_done(11)
    state.mark_done(13)
    assert state.next_commit_offset() == 10

    state.mark_done(10)
    assert state.next_commit_offset() == 12

    state.mark_done(12)
    assert state.next_commit_offset() == 14


def test_offset_zero_is_an_offset_not_a_missing_one() -> None:
    state = PartitionOffsets(epoch=1)
    state.track(0)

    assert state.next_commit_offset() == 0
    state.mark_done(0)
    assert state.next_commit_offset() == 1


def test_gaps_never_hold_a_commit_back() -> None:
    # Compacted or transactional topics skip offsets; an offset never consumed is never waited for.
    state = PartitionOffsets(epoch=1)
    for offset in (3, 7, 20):
        state.track(offset)
    for offset in (3, 7, 20):
        state.mark_done(offset)

    assert state.next_commit_offset() == 21


def test_an_offset_at_or_below_the_highest_seen_is_not_tracked_again() -> None:
    state = PartitionOffsets(epoch=1)
    state.track(5)

    assert state.track(5) is False
    assert state.track(4) is False
    assert state.incomplete_count == 1


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60), st.data())
def test_the_commit_offset_never_passes_an_unfinished_offset(steps: list[int], data: st.DataObject) -> None:
    state = PartitionOffsets(epoch=1)
    offset = 0
    seen: list[int] = []
    done: set[int] = set()
    for step in steps:
        offset += step
        state.track(offset)
        seen.append(offset)
        finishing = data.draw(st.lists(st.sampled_from(seen), max_size=3))
        for finished in finishing:
            state.mark_done(finished)
            done.add(finished)

        commit = state.next_commit_offset()
        unfinished = [o for o in seen if o not in done]
        expected = min(unfinished) if unfinished else max(seen) + 1
        assert commit == expected
        assert all(o >= commit for o in unfinished)


def test_the_tracker_ignores_results_of_a_revoked_assignment() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    old_epoch = tracker.track(TP, 0)
    assert old_epoch is not None

    tracker.revoke([TP])
    tracker.assign([TP])
    new_epoch = tracker.track(TP, 0)

    assert new_epoch != old_epoch
    assert tracker.mark_done(TP, 0, old_epoch) is False
    assert tracker.begin(TP, old_epoch, 0) is Ownership.STALE
    assert tracker.mark_done(TP, 0, new_epoch or -1) is True


def test_an_unassigned_partition_is_not_tracked() -> None:
    assert OffsetTracker().track(TP, 3) is None


def test_commits_are_due_only_when_the_offset_moved() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    epoch = tracker.track(TP, 0) or 0
    tracker.track(TP, 1)

    assert tracker.commits_due() == [Commit(TP[0], TP[1], 0, epoch)]
    tracker.commit_sent(tracker.commits_due())
    assert tracker.commits_due() == []

    tracker.mark_done(TP, 0, epoch)
    due = tracker.commits_due()
    assert due == [Commit(TP[0], TP[1], 1, epoch)]
    tracker.commit_sent(due)
    tracker.commit_failed([(TP, 1)])
    assert tracker.commits_due() == due


def test_revoke_returns_what_is_safe_to_commit() -> None:
    tracker = OffsetTracker()
    tracker.assign([TP])
    epoch = tracker.track(TP, 0) or 0
    tracker.track(TP, 1)
    tracker.mark_done(TP, 0, epoch)

    assert tracker.revoke([TP]) == [Commit(TP[0], TP[1], 1, epoch)]
    assert tracker.assigned() == []


def test_a_consumed_batch_is_tracked_in_runs_with_each_run_s_epoch() -> None:
    tracker = OffsetTracker()
    tracker.assign([("t", 0), ("t", 1)])
    epochs = tracker.track_runs([(("t", 0), [5]), (("t", 1), [7, 8]), (("gone", 0), [1]), (("t", 0), [6])])

    assert epochs[2] is None
    assert epochs[0] == epochs[3] != epochs[1]
    assert (epochs[0] is not None) and (epochs[1] is not None)
    assert tracker.mark_done(("t", 0), 5, epochs[0])
    assert tracker.mark_done(("t", 1), 7, epochs[1])
    assert sorted((c.partition, c.offset) for c in tracker.commits_due()) == [(0, 6), (1, 8)]


@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=6), min_size=1, max_size=8))
def test_a_run_is_tracked_as_its_offsets_one_by_one(runs: list[list[int]]) -> None:
    one_by_one, in_runs = PartitionOffsets(epoch=1), PartitionOffsets(epoch=1)
    for run in runs:
        for offset in run:
            one_by_one.track(offset)
        in_runs.track_run(run)

        assert in_runs.highest_seen == one_by_one.highest_seen
        assert in_runs.incomplete_count == one_by_one.incomplete_count
        assert in_runs.next_commit_offset() == one_by_one.next_commit_offset()
    for offset in sorted({o for run in runs for o in run}):
        assert in_runs.mark_done(offset) == one_by_one.mark_done(offset)
        assert in_runs.next_commit_offset() == one_by_one.next_commit_offset()
