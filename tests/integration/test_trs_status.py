"""``trs status``: request topics, the workers' group with its offsets, members and lag, and reply topics,
read from the real broker's admin API with a real worker running."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from producer import HttpRequest, Task, run
from producer.cluster_status import read_status
from producer.dev.embedded_broker import free_port
from producer.topics import TopicAdmin, TopicSpec
from shared.wire import new_batch_id, reply_topic
from tests.http_target import HttpTarget
from tests.integration.conftest import SharedWorker, new_service
from tests.trs_cli import trs
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

#: What the status says of a broker that doesn't describe a group's members (the embedded one).
NO_MEMBERS_NOTE = "but names no members, so it doesn't describe them"


def status_json(bootstrap: str, *groups: str) -> dict[str, Any]:
    completed = trs("status", "--json", "--bootstrap-servers", bootstrap, *(a for g in groups for a in ("--group", g)))
    assert completed.returncode == 0, completed.stderr
    data: dict[str, Any] = json.loads(completed.stdout)
    return data


def committed_total(bootstrap: str, group_id: str) -> int:
    status = read_status({"bootstrap.servers": bootstrap}, groups=[group_id])
    group = next(g for g in status.groups if g.group_id == group_id)
    return sum(p.committed or 0 for p in group.partitions)


def test_status_shows_the_workers_group_and_the_reply_topics_by_age(
    kafka_bootstrap: str, admin: TopicAdmin, shared_worker: SharedWorker, target: HttpTarget
) -> None:
    service = shared_worker.service
    now = datetime.now(UTC)
    expired = reply_topic(service.name, new_batch_id(now - timedelta(hours=2), now - timedelta(hours=1)))
    live = reply_topic(service.name, new_batch_id(now - timedelta(seconds=5), now + timedelta(hours=1)))
    for topic in (live, expired):
        admin.create(TopicSpec(topic, 1, timedelta(hours=2)))
    tasks = [Task(service_name=service.name, request=HttpRequest(url=f"{target.http}/ok")) for _ in range(8)]
    results = run(tasks, mode="remote", bootstrap_servers=kafka_bootstrap)
    assert [r.ok for r in results] == [True] * 8
    wait_until(lambda: committed_total(kafka_bootstrap, shared_worker.group_id) == 8, what="the worker's commits")

    status = status_json(kafka_bootstrap, shared_worker.group_id)

    (topic,) = [t for t in status["request_topics"] if t["name"] == service.request_topic]
    assert (topic["service"], topic["partitions"]) == (service.name, service.partitions)
    (group,) = [g for g in status["groups"] if g["group_id"] == shared_worker.group_id]
    assert group["state"] == "stable"
    assert {p["topic"] for p in group["partitions"]} == {service.request_topic}
    assert sum(p["committed"] for p in group["partitions"]) == 8
    if group["members"] is None:
        assert any(shared_worker.group_id in note and NO_MEMBERS_NOTE in note for note in status["notes"])
    else:
        (member,) = group["members"]
        assert sorted(p for _, p in member["partitions"]) == list(range(service.partitions))
    mine = [t for t in status["reply_topics"] if t["name"] in (expired, live)]
    assert [t["name"] for t in mine] == [expired, live]
    assert 7190 < mine[0]["age_seconds"] < 7300 and -3700 < mine[0]["expires_in_seconds"] < -3590
    assert 0 < mine[1]["age_seconds"] < 120 and 3480 < mine[1]["expires_in_seconds"] < 3600
    admin.delete([expired, live])


def test_status_shows_a_groups_lag_per_partition(kafka_bootstrap: str, admin: TopicAdmin) -> None:
    service = new_service(admin, partitions=2)
    group_id = f"lagging-{uuid.uuid4().hex[:8]}"
    # One record a produce request: the embedded broker gives a right end offset only for single-record batches.
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    for n in range(3):
        producer.produce(service.request_topic, value=b"{}", partition=0)
        assert producer.flush(10) == 0, n
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group_id, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(service.request_topic, 0, 1)], asynchronous=False)
    consumer.close()

    status = status_json(kafka_bootstrap, group_id)

    (group,) = [g for g in status["groups"] if g["group_id"] == group_id]
    assert group["partitions"] == [
        {"topic": service.request_topic, "partition": 0, "end": 3, "committed": 1, "lag": 2, "member": None}
    ]
    assert group["lag"] == 2
    (topic,) = [t for t in status["request_topics"] if t["name"] == service.request_topic]
    assert topic["end_offsets"] == {"0": 3, "1": 0}


def test_status_draws_tables_for_a_person(kafka_bootstrap: str, admin: TopicAdmin) -> None:
    service = new_service(admin, partitions=3)

    completed = trs("status", "--bootstrap-servers", kafka_bootstrap, "--group", "nobody-yet", env={"COLUMNS": "200"})

    assert completed.returncode == 0, completed.stderr
    text = " ".join(completed.stdout.split())
    assert f"request topics at {kafka_bootstrap}" in text
    assert f"{service.request_topic} │ {service.name} │ 3 │ 0 0 0" in text
    assert "group nobody-yet:" in text
    assert "reply topics, oldest first" in text


def test_status_reports_an_unreachable_broker() -> None:
    address = f"127.0.0.1:{free_port()}"

    completed = trs("status", "--bootstrap-servers", address, timeout=60)

    assert completed.returncode == 1
    assert f"Error: no Kafka broker answered at {address} within 10 s" in completed.stderr
