"""Responses share equal header pairs, so a batch that keeps its results doesn't keep each pair once per result."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.engine.engine import transport_factory
from shared.engine.transport import SHARED_HEADERS_LIMIT, TlsConfig, shared_header
from shared.models import HttpRequest, TransportPolicy
from tests.http_target import HttpTarget

#: The table behind ``shared_header``, which every test here starts empty: a table near its limit would start over
#: between two lookups, and a pair from an earlier run would be found before the test's own.
_TABLE: dict[tuple[str, str], tuple[str, str]] = shared_header.__self__  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def empty_table() -> Iterator[None]:
    _TABLE.clear()
    yield
    _TABLE.clear()


def test_an_equal_pair_is_the_one_seen_first() -> None:
    value = uuid.uuid4().hex
    first = ("x-shared-test", value)
    again = ("x-shared-test", "".join(value))
    assert first is not again

    assert shared_header(first) is first
    assert shared_header(again) is first
    assert shared_header(("x-shared-test", "other")) == ("x-shared-test", "other")


def test_pairs_that_never_repeat_cannot_grow_the_table() -> None:
    for n in range(SHARED_HEADERS_LIMIT * 3):
        pair = ("date", f"unique {n}")
        assert shared_header(pair) == pair
        assert len(_TABLE) <= SHARED_HEADERS_LIMIT


@pytest.mark.parametrize("transport", ["pyreqwest", "httpx"])
async def test_two_responses_keep_the_same_pair_objects(transport: str, target: HttpTarget) -> None:
    async with transport_factory(transport)(TransportPolicy(), TlsConfig()) as sending:
        request = HttpRequest(url=f"{target.http}/cookies")
        one, two = [await sending.send(request, user_agent=None, max_body_bytes=1000, timeout=10) for _ in range(2)]

    # The date may turn a second between the two; every other pair is the same object in both.
    kept = [[pair for pair in response.headers if pair[0].lower() != "date"] for response in (one, two)]
    assert [value for name, value in kept[0] if name.lower() == "set-cookie"] == ["a=1", "b=2"]
    assert kept[0] == kept[1]
    assert all(a is b for a, b in zip(*kept, strict=True))
