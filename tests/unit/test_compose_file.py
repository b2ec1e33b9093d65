"""docker-compose.kafka.yml can't run here (no Docker engine), so it is checked offline."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, object]:
    data: dict[str, object] = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    return data


def test_compose_file_matches_the_compose_specification() -> None:
    # Schema from the compose-spec project (Apache-2.0), vendored in tests/data.
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())

    jsonschema.Draft201909Validator(schema).validate(_compose())


def test_compose_kafka_is_single_node_kraft_on_localhost_without_auto_create() -> None:
    kafka = _compose()["services"]["kafka"]  # type: ignore[index]
    env = kafka["environment"]

    assert kafka["image"].startswith("apache/kafka:")
    assert "127.0.0.1:9092:9092" in kafka["ports"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://localhost:9092"
