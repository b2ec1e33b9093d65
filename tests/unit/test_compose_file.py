"""docker-compose.kafka.yml can't run here (no Docker engine), so it is checked offline: against the
Compose Specification's schema, and against the files and settings it wires together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from consumer.settings import WorkerSettings
from consumer.worker import FLUSH_TIMEOUT
from tests.deploy.manifests import worker_variables

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ["worker-1", "worker-2"]
LONG_RUNNING = ["kafka", *WORKERS, "prometheus", "grafana"]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    return data


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _compose()["services"]
    return services


def _mounts(service: str) -> dict[str, Path]:
    """Each bind mount of ``service``: its target in the container, and its source in the repository."""
    mounts = {}
    for volume in _services()[service]["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[target] = ROOT / source
    return mounts


def _seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_compose_file_matches_the_compose_specification() -> None:
    # Schema from the compose-spec project (Apache-2.0), vendored in tests/data.
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())

    jsonschema.Draft201909Validator(schema).validate(_compose())


def test_compose_kafka_is_single_node_kraft_on_localhost_without_auto_create() -> None:
    kafka = _services()["kafka"]
    env = kafka["environment"]

    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["ports"] == ["127.0.0.1:9092:9092"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://localhost:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_kafka_starts_alone() -> None:
    # `docker compose -f docker-compose.kafka.yml up kafka` starts what kafka depends on: nothing.
    assert "depends_on" not in _services()["kafka"]


def test_the_services_are_the_local_stack_and_each_long_running_one_has_a_healthcheck() -> None:
    services = _services()

    assert set(services) == {"kafka", "topics-init", *WORKERS, "prometheus", "grafana"}
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_topics_init_runs_once_after_kafka_and_before_the_workers() -> None:
    services = _services()
    init = services["topics-init"]

    assert init["entrypoint"][:3] == ["trs", "topics", "init"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for name in WORKERS:
        assert services[name]["depends_on"] == {"topics-init": {"condition": "service_completed_successfully"}}


def test_the_workers_are_built_from_the_dockerfile_and_reach_kafka_inside_the_network() -> None:
    services = _services()
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    inside = {listener.split("://")[1] for listener in advertised} - {"localhost:9092"}
    known = worker_variables()

    for name in [*WORKERS, "topics-init"]:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
        assert (ROOT / service["build"]["dockerfile"]).exists()
        assert service["environment"]["TRS_KAFKA_BOOTSTRAP_SERVERS"] in inside, name
        assert set(service["environment"]) <= known, name
    instance_ids = {services[name]["environment"]["TRS_WORKER_INSTANCE_ID"] for name in WORKERS}
    assert len(instance_ids) == len(WORKERS)


def test_the_workers_are_locked_down_and_get_time_to_drain() -> None:
    drain = WorkerSettings.model_fields["grace_period"].default + FLUSH_TIMEOUT

    for name in WORKERS:
        worker = _services()[name]
        assert worker["read_only"] is True
        assert worker["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in worker["security_opt"]
        assert _seconds(worker["stop_grace_period"]) > drain
        assert "http://127.0.0.1:8080/readyz" in " ".join(worker["healthcheck"]["test"])


def test_prometheus_scrapes_both_workers_with_the_rules_loaded() -> None:
    mounts = _mounts("prometheus")
    config = yaml.safe_load((mounts["/etc/prometheus"] / "prometheus.yml").read_text())

    (job,) = config["scrape_configs"]
    (targets,) = job["static_configs"]
    assert sorted(targets["targets"]) == [f"{name}:8080" for name in WORKERS]
    for rule_file in config["rule_files"]:
        assert (mounts["/etc/prometheus"] / rule_file).exists()


def test_grafana_is_provisioned_with_the_dashboard_and_the_local_prometheus() -> None:
    mounts = _mounts("grafana")
    provisioning = mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "trs.yaml").read_text())["providers"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]

    dashboards = [target for target in mounts if target.startswith(provider["options"]["path"] + "/")]
    assert [mounts[target] for target in dashboards] == [ROOT / "deploy/grafana/trs-worker.json"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    assert _services()["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
