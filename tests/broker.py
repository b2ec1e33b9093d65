"""Where the tests get their Kafka broker from, in the order ARCHITECTURE.md gives.

1. ``TRS_KAFKA_BOOTSTRAP``: an existing cluster;
2. testcontainers' Apache Kafka, when a Docker engine answers;
3. the embedded Tansu broker on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from producer.dev.embedded_broker import EmbeddedBroker, wait_for_broker


def _docker_answers() -> bool:
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """Yield the bootstrap servers of a running broker; stop it afterwards if we started it."""
    existing = os.environ.get("TRS_KAFKA_BOOTSTRAP")
    if existing:
        wait_for_broker(existing)
        yield existing
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            wait_for_broker(bootstrap)
            yield bootstrap
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers
