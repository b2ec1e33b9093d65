"""The local runner's in-flight limit: slots go first come first served and are never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from producer.local import InflightSlots

T = TypeVar("T")
#: Seconds any one wait may take: a slot that is never handed over fails the test here, not at the suite's timeout.
WAIT = 5.0


async def within(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(WAIT):
        return await awaitable


async def test_slots_are_handed_to_waiters_in_arrival_order() -> None:
    slots = InflightSlots(1)
    await slots.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        await slots.acquire()
        order.append(name)

    first, second = asyncio.create_task(take("first")), asyncio.create_task(take("second"))
    await asyncio.sleep(0)
    assert slots.wanted

    slots.release()
    await within(first)
    assert order == ["first"]
    assert slots.wanted
    slots.release()
    await within(second)
    assert order == ["first", "second"]
    assert not slots.wanted


async def test_a_cancelled_waiter_leaves_the_line_and_takes_no_slot() -> None:
    slots = InflightSlots(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)

    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)

    assert not slots.wanted
    slots.release()
    await within(slots.acquire())


async def test_a_slot_handed_to_a_waiter_cancelled_in_the_meantime_goes_to_the_next() -> None:
    slots = InflightSlots(1)
    await slots.acquire()
    doomed = asyncio.create_task(slots.acquire())
    heir = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)

    slots.release()  # hands the slot to ``doomed``...
    doomed.cancel()  # ...which is cancelled before it can run
    await asyncio.gather(doomed, return_exceptions=True)

    await within(heir)
    assert doomed.cancelled()
