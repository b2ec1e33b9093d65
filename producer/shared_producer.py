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

__all__ = ["FLUSH_AT_EXIT_TIMEOUT", "close_shared_producers", "is_proven", "mark_proven", "shared_producer"]

#: Seconds the producers get at interpreter exit to deliver what they still hold.
FLUSH_AT_EXIT_TIMEOUT = 10.0

_lock = threading.Lock()
_producers: dict[tuple[tuple[str, str], ...], Producer] = {}
#: Ids of the producers that have had a message acknowledged: they hold their producer id.
_proven: set[int] = set()


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


def is_proven(producer: Producer) -> bool:
    """Whether ``producer`` has had a message acknowledged by the broker, and so can send at once."""
    with _lock:
        return id(producer) in _proven


def mark_proven(producer: Producer) -> None:
    with _lock:
        _proven.add(id(producer))


def close_shared_producers(timeout: float = FLUSH_AT_EXIT_TIMEOUT, *, bootstrap_servers: str | None = None) -> None:
    """Deliver what the shared producers hold, within ``timeout``, and close them.

    For a process that is done with Kafka, or with the cluster at ``bootstrap_servers``, before
    it exits (a producer left to a stopped broker reconnects and logs until the exit); a later
    remote runner starts afresh.
    """
    with _lock:
        for key, producer in list(_producers.items()):
            if bootstrap_servers is None or ("bootstrap.servers", bootstrap_servers) in key:
                if producer.flush(timeout):
                    # What the broker didn't take in time (a topic it lost, say) is dropped here:
                    # close() flushes again, and would wait for it on its own clock.
                    producer.purge()
                    producer.poll(0)
                producer.close()
                _proven.discard(id(producer))
                del _producers[key]


def _flush_all() -> None:
    close_shared_producers()
