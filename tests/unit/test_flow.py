"""Flow control: take while there is room, hold a full backlog, pause only one that stays full, wake on room."""

from __future__ import annotations

import threading

from consumer.flow import Backlog, FlowControl, Step, low_water


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


def test_the_low_water_mark_leaves_at_least_half_the_backlog_free() -> None:
    assert [low_water(n) for n in (1, 2, 3, 100, 101)] == [0, 1, 2, 50, 51]


def test_a_holding_fetcher_finds_room_once_takes_reach_the_low_water_mark() -> None:
    backlog = Backlog(100)
    backlog.handed(100)

    def take_fifty() -> None:
        for _ in range(50):
            backlog.took()

    # The takes may land before or during the wait; the wait sees the room either way.
    takes = threading.Thread(target=take_fifty)

    takes.start()
    found = backlog.wait_for_room(timeout=60)
    takes.join()

    assert found
    assert len(backlog) == 50


def test_a_full_backlog_finds_no_room_before_its_timeout() -> None:
    backlog = Backlog(100)
    backlog.handed(100)
    for _ in range(49):
        backlog.took()

    assert not backlog.wait_for_room(timeout=0)
    assert len(backlog) == 51


def test_a_backlog_below_the_mark_has_room_at_once() -> None:
    backlog = Backlog(100)
    backlog.handed(30)

    assert backlog.wait_for_room(timeout=0)
