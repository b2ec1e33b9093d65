"""The worker's librdkafka settings that its guarantees rest on."""

from __future__ import annotations

from consumer.kafka_config import consumer_config, control_config, producer_config, subscription
from consumer.settings import WorkerSettings
from shared.settings import KafkaSettings

KAFKA = KafkaSettings(bootstrap_servers="k:9092")


def test_the_group_consumer_commits_by_hand_cooperatively_from_the_earliest_task() -> None:
    config = consumer_config(KAFKA, WorkerSettings(session_timeout_ms=6000, max_poll_interval_ms=6000))

    assert config["group.id"] == "trs-workers"
    assert config["partition.assignment.strategy"] == "cooperative-sticky"
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["auto.offset.reset"] == "earliest"
    assert config["allow.auto.create.topics"] is False
    assert config["session.timeout.ms"] == 6000
    assert "group.instance.id" not in config


def test_an_instance_id_gives_static_membership() -> None:
    config = consumer_config(KAFKA, WorkerSettings(instance_id="trs-worker-7"))

    assert config["group.instance.id"] == "trs-worker-7"


def test_the_control_consumer_is_outside_the_workers_group() -> None:
    one = control_config(KAFKA, WorkerSettings())
    two = control_config(KAFKA, WorkerSettings())

    assert one["group.id"] != "trs-workers"
    assert one["group.id"] != two["group.id"]
    assert one["enable.auto.commit"] is False


def test_the_producer_never_creates_topics_and_is_idempotent() -> None:
    config = producer_config(KAFKA, WorkerSettings())

    assert config["allow.auto.create.topics"] is False
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["bootstrap.servers"] == "k:9092"


def test_the_subscription_is_the_topic_list_or_an_anchored_pattern() -> None:
    assert subscription(WorkerSettings()) == ["^trs-.*-http-v1-send$"]
    assert subscription(WorkerSettings(topics_pattern="trs-a-.*")) == ["^trs-a-.*"]
    assert subscription(WorkerSettings(topics=["trs-a-http-v1-send"])) == ["trs-a-http-v1-send"]
