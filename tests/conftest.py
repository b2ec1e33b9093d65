from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker import kafka_broker


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker, shared by the whole session."""
    with kafka_broker() as bootstrap:
        yield bootstrap
