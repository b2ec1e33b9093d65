"""Kafka topic administration: the shared topics, reply topics, and removal of orphaned ones.

Every call is blocking and bounded by ``timeout``; async callers run them in a thread.

* ``init``: ``trs-control``, ``trs-dlq`` and the request topics of the services named.
* ``create_reply_topic`` / ``delete``: a batch's reply topic, made by ``launch`` and removed by ``close``.
* ``collect_garbage``: reply topics whose batch has expired and that are older than a given age,
  left behind by clients that crashed before ``close``. A reply topic's name carries its batch's
  creation and expiry times (``shared.wire.new_batch_id``), so a live batch's topic is never taken
  by a gc whose clock is right. Should one be taken all the same (a skewed clock), ``release``
  first: a notice on ``trs-control`` names the topics, and a client still reading one lets go of
  it before it goes, since a deletion under a reader can crash librdkafka (``producer.reply_reader``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic  # type: ignore[attr-defined]

from shared.errors import BrokerUnavailable, TopicMissing
from shared.kafka_logging import with_kafka_logging
from shared.models import ReleaseNotice
from shared.wire import (
    CONTROL_TOPIC,
    DLQ_TOPIC,
    REPLY_TOPIC_PREFIX_RE,
    batch_times,
    encode_release,
    request_topic,
)

__all__ = ["DEFAULT_REQUEST_PARTITIONS", "TopicAdmin", "TopicSpec"]

log = logging.getLogger(__name__)

#: Partitions of a request topic: the most workers one service's tasks can spread over.
DEFAULT_REQUEST_PARTITIONS = 12
#: Cancel orders are few; one partition keeps them in order.
CONTROL_PARTITIONS = 1
DLQ_PARTITIONS = 3
#: A cancel order matters while its batch's tasks can still be queued: at most a day (the longest timeout).
CONTROL_RETENTION = timedelta(days=2)
DLQ_RETENTION = timedelta(days=7)
#: Request topics keep tasks no longer than their longest possible deadline.
REQUEST_RETENTION = timedelta(days=1)
#: Seconds an admin call may take.
DEFAULT_TIMEOUT = 10.0
#: Seconds between a release notice's acknowledgement and the deletion. A reader lets go within
#: a round of reading the notice (milliseconds), and must then send no fetch naming the topic
#: for 0.05 s; the rest is room for a reader that is slow to get there.
RELEASE_WAIT = 1.0
#: Most reply topics one release notice names, which keeps a notice far below Kafka's 1 MB.
TOPICS_PER_NOTICE = 200
#: A batch id keeps its expiry in whole seconds, rounded down: a batch may run this much longer.
EXPIRY_ROUNDING = timedelta(seconds=1)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention: timedelta

    def new_topic(self) -> NewTopic:
        retention_ms = str(int(self.retention.total_seconds() * 1000))
        return NewTopic(
            self.name, num_partitions=self.partitions, replication_factor=-1, config={"retention.ms": retention_ms}
        )


class TopicAdmin:
    """Topic operations on one cluster."""

    def __init__(self, config: dict[str, Any], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        # Asking whether a topic exists must not create it, as a broker with topic
        # auto-creation on does for a client that allows it (librdkafka's default here).
        self._handle: AdminClient | None = AdminClient(
            with_kafka_logging({**config, "allow.auto.create.topics": False})
        )
        self._config = config
        self._timeout = timeout
        self._servers = str(config.get("bootstrap.servers", ""))

    @property
    def _admin(self) -> AdminClient:
        if self._handle is None:
            raise RuntimeError(f"the topic admin for {self._servers} is closed")
        return self._handle

    def close(self) -> None:
        """Drop the connections to the cluster; the admin can't be used afterwards.

        librdkafka's admin handle has no close call: it is destroyed with its last reference, which
        is this one. Left to the garbage collector, it would outlive its runner and keep reconnecting.
        """
        self._handle = None

    def topics(self) -> set[str]:
        """Every topic's name; raises ``BrokerUnavailable`` when the broker doesn't answer."""
        return set(self._metadata(None).topics)

    def exists(self, topic: str) -> bool:
        """Whether ``topic`` exists; asks about that topic alone."""
        found = self._metadata(topic).topics.get(topic)
        return (found is not None) and found.error is None

    def _metadata(self, topic: str | None) -> ClusterMetadata:
        try:
            return self._admin.list_topics(topic, timeout=self._timeout)
        except KafkaException as exc:
            # The admin's log lines wait in its queue until polled; they tell why no broker answered.
            self._admin.poll(0)
            raise BrokerUnavailable(f"no Kafka broker answered at {self._servers} within {self._timeout:g} s") from exc

    def ensure(self, specs: Iterable[TopicSpec]) -> list[str]:
        """Create the topics that don't exist yet; returns the names created."""
        missing = [spec.new_topic() for spec in specs if not self.exists(spec.name)]
        if not missing:
            return []
        # Another client may have created one meanwhile; that is what was wanted.
        futures = self._admin.create_topics(missing, request_timeout=self._timeout)
        return self._done(futures, tolerated=KafkaError.TOPIC_ALREADY_EXISTS)

    def init(self, services: Iterable[str] = (), *, partitions: int = DEFAULT_REQUEST_PARTITIONS) -> list[str]:
        """Create ``trs-control``, ``trs-dlq`` and the request topic of each service, when missing."""
        specs = [
            TopicSpec(CONTROL_TOPIC, CONTROL_PARTITIONS, CONTROL_RETENTION),
            TopicSpec(DLQ_TOPIC, DLQ_PARTITIONS, DLQ_RETENTION),
        ]
        specs += [TopicSpec(request_topic(service), partitions, REQUEST_RETENTION) for service in services]
        return self.ensure(specs)

    def create(self, spec: TopicSpec) -> None:
        """Create one topic; it must not exist yet."""
        future = self._admin.create_topics([spec.new_topic()], request_timeout=self._timeout)[spec.name]
        try:
            future.result(self._timeout)
        except KafkaException as exc:
            raise BrokerUnavailable(f"could not create topic {spec.name}: {exc.args[0].str()}") from exc

    def delete(self, topics: Iterable[str]) -> list[str]:
        """Delete ``topics``; returns those deleted (one already gone is not an error)."""
        names = list(topics)
        if not names:
            return []
        futures = self._admin.delete_topics(names, request_timeout=self._timeout)
        return self._done(futures, tolerated=KafkaError.UNKNOWN_TOPIC_OR_PART)

    def _done(self, futures: dict[str, Future[None]], *, tolerated: int) -> list[str]:
        """The topics whose admin operation succeeded; an error of code ``tolerated`` is no failure."""
        succeeded = []
        for name, future in futures.items():
            try:
                future.result(self._timeout)
                succeeded.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != tolerated:
                    raise
        return succeeded

    def orphans(self, older_than: timedelta, *, now: datetime | None = None) -> list[str]:
        """Reply topics whose batch has expired and that were created more than ``older_than`` ago."""
        now = now or datetime.now(UTC)
        found = []
        for topic in sorted(self.topics()):
            match = REPLY_TOPIC_PREFIX_RE.match(topic)
            times = None if match is None else batch_times(match.group("batch"))
            if times is None:
                continue
            created, expires = times
            if expires + EXPIRY_ROUNDING < now and created < now - older_than:
                found.append(topic)
        return found

    def release(self, topics: list[str]) -> None:
        """Tell clients that ``topics`` are about to be deleted, and give them ``RELEASE_WAIT`` to let go.

        Raises ``TopicMissing`` without ``trs-control``, and ``BrokerUnavailable`` when the notice
        isn't acknowledged within the timeout: then nothing may be deleted.
        """
        if not self.exists(CONTROL_TOPIC):
            raise TopicMissing(
                f"topic {CONTROL_TOPIC} does not exist, so no client can be told to let go of a reply topic "
                "before it is deleted: create it with 'trs topics init'"
            )
        problem = self._publish_release(topics)
        if problem is not None:
            raise BrokerUnavailable(f"could not publish the release notice to {CONTROL_TOPIC}: {problem}")
        time.sleep(RELEASE_WAIT)

    def _publish_release(self, topics: list[str]) -> str | None:
        """Publish the release notices of ``topics``; what went wrong, or ``None`` once all are acknowledged."""
        failures: list[str] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                failures.append(error.str())

        producer = Producer(
            with_kafka_logging({**self._config, "allow.auto.create.topics": False, "acks": "all", "linger.ms": 0})
        )
        for start in range(0, len(topics), TOPICS_PER_NOTICE):
            value, headers = encode_release(ReleaseNotice(topics=topics[start : start + TOPICS_PER_NOTICE]))
            try:
                producer.produce(CONTROL_TOPIC, value=value, headers=headers, on_delivery=delivered)
            except KafkaException as exc:
                failures.append(exc.args[0].str())
        unsent = producer.flush(self._timeout)
        refused = failures[:1]
        if unsent:
            # Given up: close() would otherwise flush them again, on its own clock.
            producer.purge()
            producer.poll(0)
        producer.close()
        if refused:
            return refused[0]
        return f"not acknowledged within {self._timeout:g} s" if unsent else None

    def collect_garbage(self, older_than: timedelta, *, now: datetime | None = None) -> list[str]:
        """Delete the ``orphans``, once their ``release`` went out; returns their names."""
        orphans = self.orphans(older_than, now=now)
        if not orphans:
            return []
        self.release(orphans)
        deleted = self.delete(orphans)
        for topic in deleted:
            log.info("deleted orphaned reply topic %s", topic)
        return deleted
