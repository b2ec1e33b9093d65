"""What the worker remembers of reply topics is bounded: entries expire with their TTL, under a cap."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from consumer import replies
from consumer.offsets import OffsetTracker
from consumer.replies import EXISTS_TTL, MISSING_TTL, Replies, ReplyTopics
from shared.wire import reply_topic


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Metadata:
    """``list_topics`` of a producer that knows the topics in ``existing``."""

    def __init__(self) -> None:
        self.existing: set[str] = set()
        self.lookups = 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        self.lookups += 1
        found = {topic: SimpleNamespace(error=None)} if topic in self.existing else {}
        return SimpleNamespace(topics=found)


def _topics(clock: Clock) -> tuple[ReplyTopics, Metadata]:
    metadata = Metadata()
    return ReplyTopics(metadata, clock=clock), metadata  # type: ignore[arg-type]


async def test_a_worker_seeing_a_new_batch_every_second_remembers_only_the_recent_ones() -> None:
    clock = Clock()
    topics, metadata = _topics(clock)

    for n in range(2000):
        topic = reply_topic("svc", f"batch-{n}")
        metadata.existing.add(topic)
        assert await topics.exists(topic)
        if n % 2:
            # Half the batches are closed by the time a late result comes.
            metadata.existing.discard(topic)
            clock.now += EXISTS_TTL
            assert not await topics.exists(topic)
        clock.now += 1.0

    # The missing ones are kept MISSING_TTL seconds, the existing ones EXISTS_TTL: a few hundred, not 2,000.
    assert len(topics) <= MISSING_TTL / 2 + 2


async def test_what_is_remembered_expires_with_its_ttl() -> None:
    clock = Clock()
    topics, metadata = _topics(clock)
    metadata.existing.add("here")
    await topics.exists("here")
    await topics.exists("gone")

    assert (topics.known("here"), topics.known("gone")) == (True, False)
    clock.now += EXISTS_TTL
    assert (topics.known("here"), topics.known("gone")) == (None, False)
    clock.now += MISSING_TTL
    assert topics.known("gone") is None
    assert await topics.exists("gone") is False
    assert metadata.lookups == 3


async def test_a_topic_seen_to_exist_is_looked_up_again_past_half_its_ttl_while_results_go_on() -> None:
    clock = Clock()
    topics, metadata = _topics(clock)
    metadata.existing.add("busy")
    assert await topics.exists("busy")
    clock.now += EXISTS_TTL / 2

    # Still trusted, so a result produced now does not wait; the lookup runs meanwhile.
    assert topics.known("busy") is True
    async with asyncio.timeout(5):
        while metadata.lookups < 2 or topics.refreshing("busy"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    clock.now += EXISTS_TTL * 0.9
    assert topics.known("busy") is True
    clock.now += EXISTS_TTL * 0.2
    assert topics.known("busy") is None


async def test_the_cap_holds_however_fast_topics_come(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "MAX_REMEMBERED_TOPICS", 50)
    clock = Clock()
    topics, _ = _topics(clock)

    for n in range(500):
        await topics.exists(f"gone-{n}")

    assert len(topics) == 50
    assert topics.known("gone-499") is False
    assert topics.known("gone-449") is None


async def test_a_topic_seen_again_moves_from_one_memory_to_the_other() -> None:
    clock = Clock()
    topics, metadata = _topics(clock)
    await topics.exists("t")
    clock.now += MISSING_TTL
    metadata.existing.add("t")

    assert await topics.exists("t") is True
    assert len(topics) == 1


async def test_forget_batch_drops_its_reply_topic() -> None:
    clock = Clock()
    topics, metadata = _topics(clock)
    mine, other = reply_topic("svc", "b-1"), reply_topic("svc", "b-2")
    metadata.existing |= {mine, other}
    await topics.exists(mine)
    await topics.exists(other)

    topics.forget_batch("b-1")

    assert (topics.known(mine), topics.known(other)) == (None, True)


def test_the_topics_whose_drops_were_logged_are_bounded_too() -> None:
    clock = Clock()
    topics, _ = _topics(clock)
    sent = Replies(
        producer=Metadata(),  # type: ignore[arg-type]
        tracker=OffsetTracker(),
        topics=topics,
        worker_name="w",
        max_message_bytes=1_000_000,
        clock=clock,
    )

    for n in range(5000):
        sent._drop(f"gone-{n}")
        clock.now += 1.0

    assert len(sent._dropped_topics) <= MISSING_TTL + 1
