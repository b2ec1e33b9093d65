"""The Strimzi KafkaTopics are the topics `trs topics init` creates: run it on the test broker and
compare partitions and topic configs."""

from __future__ import annotations

import re
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType  # type: ignore[attr-defined]

from shared.wire import CONTROL_TOPIC, DLQ_TOPIC, REQUEST_TOPIC_PATTERN, request_topic
from tests.deploy.manifests import Resource, build, of_kind
from tests.trs_cli import trs

pytestmark = pytest.mark.integration


def _trs_topics_init(bootstrap: str, service: str) -> None:
    completed = trs("topics", "init", "--service", service, "--bootstrap-servers", bootstrap, timeout=60)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def _topic_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    """The configs set on ``topic`` itself."""
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    entries = future.result(timeout=10)
    dynamic = {name: e.value for name, e in entries.items() if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}
    # Kafka lists every config with its source. The embedded broker lists only those set on the
    # topic, and marks them as defaults: then all it lists is what was set.
    return dynamic or {name: e.value for name, e in entries.items()}


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str) -> str:
    """A service of its own, whose topics `trs topics init` has just created on the test broker."""
    name = f"deploy-{uuid.uuid4().hex[:8]}"
    _trs_topics_init(kafka_bootstrap, name)
    return name


@pytest.mark.parametrize("overlay", ["base", "prod", "scale-to-zero"])
def test_the_kafka_topics_have_the_partitions_and_configs_of_trs_topics_init(
    kafka_bootstrap: str, service: str, overlay: str
) -> None:
    topics = {t["metadata"]["name"]: t for t in of_kind(build(overlay), "KafkaTopic")}
    requests: list[Resource] = [t for name, t in topics.items() if re.match(REQUEST_TOPIC_PATTERN, name)]
    assert set(topics) == {CONTROL_TOPIC, DLQ_TOPIC, *(t["metadata"]["name"] for t in requests)}
    assert len(requests) == 1
    # The request topic is compared with the one made for this test's own service, so that no
    # other test's topic of the same name is.
    expected = {CONTROL_TOPIC: topics[CONTROL_TOPIC], DLQ_TOPIC: topics[DLQ_TOPIC], request_topic(service): requests[0]}

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10)

    for name, resource in expected.items():
        spec = resource["spec"]
        assert len(metadata.topics[name].partitions) == spec["partitions"], name
        assert _topic_configs(admin, name) == spec["config"], name
        # `trs topics init` leaves the replication factor to the brokers' default, and so does Strimzi without it.
        assert "replicas" not in spec, name
