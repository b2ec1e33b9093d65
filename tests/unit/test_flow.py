"""The fetcher's flow control: take while there is room, hold a full backlog, pause only one that stays full."""

from __future__ import annotations

from consumer.flow import FlowControl, Step


def flow() -> FlowControl:
    return FlowControl(max_backlog=100, pause_after=0.5)


def test_an_empty_backlog_takes_up_to_its_limit() -> None:
    control = flow()

    assert control.step(0, fetching=True, paused=False, now=0.0) is Step.TAKE
    assert control.room(0, fetching=True) == 100


def test_records_are_taken_only_once_half_the_backlog_has_room() -> None:
    control = flow()

    assert control.step(50, fetching=True, paused=False, now=0.0) is Step.TAKE
    assert control.step(51, fetching=True, paused=False, now=0.0) is Step.HOLD


def test_a_full_backlog_holds_without_pausing() -> None:
    # Pausing drops the prefetched messages and a resume waits about a second to fetch again.
    control = flow()

    steps = [control.step(100, fetching=True, paused=False, now=t) for t in (0.0, 0.1, 0.2, 0.49)]

    assert steps == [Step.HOLD] * 4


def test_a_backlog_that_stays_short_of_room_pauses_after_pause_after() -> None:
    control = flow()
    control.step(100, fetching=True, paused=False, now=10.0)

    assert control.step(80, fetching=True, paused=False, now=10.5) is Step.PAUSE
    assert control.step(80, fetching=True, paused=True, now=10.6) is Step.POLL


def test_room_in_between_starts_the_pause_clock_again() -> None:
    control = flow()
    control.step(100, fetching=True, paused=False, now=10.0)
    assert control.step(0, fetching=True, paused=False, now=10.4) is Step.TAKE

    assert control.step(100, fetching=True, paused=False, now=10.6) is Step.HOLD
    assert control.step(100, fetching=True, paused=False, now=11.0) is Step.HOLD
    assert control.step(100, fetching=True, paused=False, now=11.1) is Step.PAUSE


def test_paused_partitions_resume_once_half_the_backlog_has_room() -> None:
    control = flow()

    assert control.step(51, fetching=True, paused=True, now=0.0) is Step.POLL
    assert control.step(50, fetching=True, paused=True, now=0.0) is Step.RESUME


def test_a_worker_that_stops_fetching_pauses_at_once_and_never_resumes() -> None:
    control = flow()

    assert control.step(0, fetching=False, paused=False, now=0.0) is Step.PAUSE
    assert control.step(0, fetching=False, paused=True, now=0.1) is Step.POLL
    assert control.room(0, fetching=False) == 0


def test_a_backlog_of_one_takes_only_when_empty() -> None:
    control = FlowControl(max_backlog=1, pause_after=0.5)

    assert control.step(0, fetching=True, paused=False, now=0.0) is Step.TAKE
    assert control.step(1, fetching=True, paused=False, now=0.0) is Step.HOLD
