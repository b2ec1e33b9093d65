"""One idempotent Kafka producer per process and configuration, shared by every remote runner.

librdkafka's producer is thread-safe and meant to be shared. It also can't send before the
broker has given it a producer id, and a new producer asks for one only after a fixed 500 ms
timer, so a runner with a producer of its own would hold its first batch back by half a second.
Sharing one producer pays that once per process, and keeps one set of connections. The
producers are flushed when the interpreter exits.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from confluent_kafka import Producer

from shared.kafka_logging import with_kafka_logging

__all__ = ["FLUSH_AT_EXIT_TIMEOUT", "close_shared_producers", "shared_producer"]

#: Seconds the producers get at interpreter exit to deliver what they still hold.
FLUSH_AT_EXIT_TIMEOUT = 10.0

_lock = threading.Lock()
_producers: dict[tuple[tuple[str, str], ...], Producer] = {}


def shared_producer(config: dict[str, Any]) -> Producer:
    """The process's producer for ``config``, created on first use."""
    key = tuple(sorted((name, str(value)) for name, value in config.items()))
    with _lock:
        producer = _producers.get(key)
        if producer is None:
            if not _producers:
                atexit.register(_flush_all)
            producer = _producers[key] = Producer(with_kafka_logging(config))
        return producer


def close_shared_producers(timeout: float = FLUSH_AT_EXIT_TIMEOUT) -> None:
    """Deliver what the shared producers hold, within ``timeout``, and close them.

    For a process that is done with Kafka before it exits; a later remote runner starts afresh.
    """
    with _lock:
        for producer in _producers.values():
            producer.flush(timeout)
            producer.close()
        _producers.clear()


def _flush_all() -> None:
    close_shared_producers()
