"""What ``trs status`` reads from the broker's admin API: request topics, the groups that consume them, reply topics.

* Request topics (``trs-<service>-http-v1-send``) with their partitions and end offsets.
* Each consumer group with committed offsets on a request topic, or members assigned one, or named
  by the caller: its state, its members and their partitions, and its lag per partition (the end
  offset less the committed one; with no commit yet, less the first offset, since workers read a
  new partition from the start).
* Reply topics by age, with their batch's expiry, both read from the batch id in the name.

A broker that lacks an admin call, or answers one in a way that can't be right, doesn't stop the
rest: what could not be read is ``None`` and a note says why. The embedded broker (Tansu) is one
such broker; the README lists what it leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata, OffsetSpec  # type: ignore[attr-defined]

from shared.errors import BrokerUnavailable
from shared.kafka_logging import with_kafka_logging
from shared.wire import REPLY_TOPIC_PREFIX_RE, REQUEST_TOPIC_PATTERN, batch_times

__all__ = [
    "DEFAULT_WORKER_GROUP",
    "ClusterStatus",
    "GroupMember",
    "GroupStatus",
    "PartitionLag",
    "ReplyTopic",
    "RequestTopic",
    "read_status",
]

#: The workers' consumer group when ``trs-worker --group-id`` names none.
DEFAULT_WORKER_GROUP = "trs-workers"
_REQUEST_TOPIC_RE = re.compile(REQUEST_TOPIC_PATTERN)
_SERVICE_OF_REQUEST_TOPIC_RE = re.compile(r"^trs-(?P<service>.+)-http-v1-send$")
#: States in which a group has members; a broker that names none then doesn't describe them.
_STATES_WITH_MEMBERS = {
    ConsumerGroupState.STABLE,
    ConsumerGroupState.PREPARING_REBALANCING,
    ConsumerGroupState.COMPLETING_REBALANCING,
}


@dataclass(frozen=True)
class RequestTopic:
    name: str
    service: str
    partitions: int
    #: Offset after the last record, per partition; ``None`` when the broker didn't say.
    end_offsets: dict[int, int] | None


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end: int | None
    #: The next offset the group will read; ``None`` before its first commit.
    committed: int | None
    #: Records not yet committed; ``None`` when it can't be told.
    lag: int | None
    #: Member id of the member assigned the partition, if the broker said.
    member: str | None


@dataclass(frozen=True)
class GroupMember:
    member_id: str
    client_id: str
    host: str
    partitions: list[tuple[str, int]]


@dataclass(frozen=True)
class GroupStatus:
    group_id: str
    state: str
    #: ``None`` when the broker did not describe the members.
    members: list[GroupMember] | None
    partitions: list[PartitionLag]

    @property
    def lag(self) -> int | None:
        """The lag over every partition, or ``None`` if any partition's is unknown."""
        lags = [p.lag for p in self.partitions]
        return None if any(lag is None for lag in lags) else sum(lag for lag in lags if lag is not None)


@dataclass(frozen=True)
class ReplyTopic:
    name: str
    service: str
    batch_id: str
    created: datetime
    expires: datetime


@dataclass
class ClusterStatus:
    bootstrap_servers: str
    read_at: datetime
    request_topics: list[RequestTopic]
    groups: list[GroupStatus]
    reply_topics: list[ReplyTopic]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types: times as ISO 8601, reply topics with their age and time to expiry in seconds."""
        data = asdict(self)
        data["read_at"] = self.read_at.isoformat()
        for group, source in zip(data["groups"], self.groups, strict=True):
            group["lag"] = source.lag
        data["reply_topics"] = [self._reply_json(topic) for topic in self.reply_topics]
        return data

    def _reply_json(self, topic: ReplyTopic) -> dict[str, Any]:
        return {
            "name": topic.name,
            "service": topic.service,
            "batch_id": topic.batch_id,
            "created": topic.created.isoformat(),
            "expires": topic.expires.isoformat(),
            "age_seconds": round((self.read_at - topic.created).total_seconds(), 3),
            "expires_in_seconds": round((topic.expires - self.read_at).total_seconds(), 3),
        }


def read_status(config: dict[str, Any], *, groups: Iterable[str] = (), timeout: float = 10.0) -> ClusterStatus:
    """The cluster's status; raises ``BrokerUnavailable`` when no broker answers within ``timeout``."""
    return _StatusReader(config, timeout).read(list(groups))


class _StatusReader:
    def __init__(self, config: dict[str, Any], timeout: float) -> None:
        self._admin = AdminClient(with_kafka_logging({**config, "allow.auto.create.topics": False}))
        self._servers = str(config.get("bootstrap.servers", ""))
        self._timeout = timeout
        self.notes: list[str] = []

    def read(self, named_groups: list[str]) -> ClusterStatus:
        metadata = self._metadata()
        request_partitions = {
            name: len(topic.partitions) for name, topic in metadata.topics.items() if _REQUEST_TOPIC_RE.match(name)
        }
        partitions = [TopicPartition(t, p) for t, count in sorted(request_partitions.items()) for p in range(count)]
        ends = self._offsets(partitions, OffsetSpec.latest(), "end offsets")  # type: ignore[no-untyped-call]
        starts = self._offsets(partitions, OffsetSpec.earliest(), "first offsets")  # type: ignore[no-untyped-call]
        request_topics = [
            RequestTopic(name, _service(name), count, _of_topic(ends, name))
            for name, count in sorted(request_partitions.items())
        ]
        every_group = [self._group(g, set(request_partitions), ends, starts) for g in self._group_ids(named_groups)]
        groups = [g for g in every_group if g.partitions or g.group_id in named_groups]
        return ClusterStatus(
            bootstrap_servers=self._servers,
            read_at=datetime.now(UTC),
            request_topics=request_topics,
            groups=groups,
            reply_topics=_reply_topics(metadata.topics),
            notes=self.notes,
        )

    def _metadata(self) -> ClusterMetadata:
        try:
            return self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            self._admin.poll(0)
            raise BrokerUnavailable(f"no Kafka broker answered at {self._servers} within {self._timeout:g} s") from exc

    def _result(self, future: Future[Any], what: str) -> Any:
        """The future's result, or ``None`` with a note saying what the broker refused."""
        try:
            return future.result(self._timeout)
        except KafkaException as exc:
            self.notes.append(f"{what}: the broker refused the request ({exc.args[0].str()})")
        except TimeoutError:
            self.notes.append(f"{what}: no answer within {self._timeout:g} s")
        return None

    def _offsets(
        self, partitions: list[TopicPartition], spec: OffsetSpec, what: str
    ) -> dict[tuple[str, int], int] | None:
        if not partitions:
            return {}
        futures = self._admin.list_offsets({tp: spec for tp in partitions}, request_timeout=self._timeout)
        found = {}
        for tp, future in futures.items():
            answer = self._result(future, what)
            if answer is None:
                return None
            found[(tp.topic, tp.partition)] = answer.offset
        return found

    def _group_ids(self, named: list[str]) -> list[str]:
        listed = self._result(self._admin.list_consumer_groups(request_timeout=self._timeout), "consumer groups")
        ids = [] if listed is None else [g.group_id for g in listed.valid]
        return sorted(set(ids) | set(named))

    def _group(
        self,
        group_id: str,
        request_topics: set[str],
        ends: dict[tuple[str, int], int] | None,
        starts: dict[tuple[str, int], int] | None,
    ) -> GroupStatus:
        committed = self._committed(group_id, request_topics)
        description = self._describe(group_id)
        state = "unknown" if description is None else description.state.name.lower()
        members = None if description is None else _members(description, request_topics)
        if members == [] and description is not None and description.state in _STATES_WITH_MEMBERS:
            self.notes.append(
                f"group {group_id}: the broker says it is {state} but names no members, so it doesn't describe "
                "them (the embedded broker, Tansu, doesn't); partitions show no member"
            )
            members = None
        owner = {tp: m.member_id for m in members or [] for tp in m.partitions}
        keys = sorted(set(committed or {}) | set(owner))
        lags = [_lag(key, (committed or {}).get(key), ends, starts, owner.get(key)) for key in keys]
        behind = [p for p in lags if p.end is not None and p.lag is None]
        if behind:
            shown = ", ".join(f"{p.topic} [{p.partition}] {p.end} < {p.committed}" for p in behind)
            self.notes.append(
                f"group {group_id}: the broker's end offset is below the committed one, so the lag is unknown, "
                f"for {shown} (the embedded broker, Tansu, gives the first offset of a partition's last record "
                "batch, plus one, as its end)"
            )
        return GroupStatus(group_id, state, members, lags)

    def _committed(self, group_id: str, request_topics: set[str]) -> dict[tuple[str, int], int] | None:
        request = [ConsumerGroupTopicPartitions(group_id)]
        futures = self._admin.list_consumer_group_offsets(request, request_timeout=self._timeout)
        answer = self._result(futures[group_id], f"group {group_id}'s committed offsets")
        if answer is None:
            return None
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in answer.topic_partitions
            if tp.topic in request_topics and tp.offset >= 0
        }

    def _describe(self, group_id: str) -> Any:
        futures = self._admin.describe_consumer_groups([group_id], request_timeout=self._timeout)
        return self._result(futures[group_id], f"group {group_id}'s members")


def _lag(
    key: tuple[str, int],
    committed: int | None,
    ends: dict[tuple[str, int], int] | None,
    starts: dict[tuple[str, int], int] | None,
    member: str | None,
) -> PartitionLag:
    """A partition's lag; unknown when an offset is, or when the end is below where the group reads."""
    end = None if ends is None else ends.get(key)
    read_from = committed if committed is not None else (None if starts is None else starts.get(key))
    lag = None if end is None or read_from is None or end < read_from else end - read_from
    return PartitionLag(key[0], key[1], end, committed, lag, member)


def _members(description: Any, request_topics: set[str]) -> list[GroupMember]:
    return [
        GroupMember(
            member_id=member.member_id,
            client_id=member.client_id,
            host=member.host,
            partitions=sorted(
                (tp.topic, tp.partition)
                for tp in (member.assignment.topic_partitions if member.assignment is not None else [])
                if tp.topic in request_topics
            ),
        )
        for member in description.members
    ]


def _of_topic(offsets: dict[tuple[str, int], int] | None, topic: str) -> dict[int, int] | None:
    return None if offsets is None else {p: o for (t, p), o in offsets.items() if t == topic}


def _service(request_topic: str) -> str:
    match = _SERVICE_OF_REQUEST_TOPIC_RE.match(request_topic)
    return match.group("service") if match else ""


def _reply_topics(topics: Iterable[str]) -> list[ReplyTopic]:
    """Reply topics whose batch id carries its times, the oldest first."""
    found = []
    for name in topics:
        match = REPLY_TOPIC_PREFIX_RE.match(name)
        times = None if match is None else batch_times(match.group("batch"))
        if match is not None and times is not None:
            found.append(ReplyTopic(name, match.group("service"), match.group("batch"), *times))
    return sorted(found, key=lambda topic: (topic.created, topic.name))
