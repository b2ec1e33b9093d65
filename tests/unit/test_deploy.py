"""The Kubernetes manifests agree with the worker they run: its settings, probes, drain, image,
topics, credentials and the networks it reaches. Each overlay is checked as kustomize builds it."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

import pytest
import yaml

from consumer.cli import _settings
from consumer.worker import FLUSH_TIMEOUT, WorkerConfig
from shared.wire import CONTROL_TOPIC, DLQ_TOPIC, REQUEST_TOPIC_PATTERN, reply_topic, request_topic
from tests.deploy.manifests import (
    DEPLOY,
    OVERLAYS,
    Resource,
    build,
    of_kind,
    one,
    worker_container,
    worker_settings_data,
    worker_variables,
)

ALL = ["base", *OVERLAYS]
WITH_OPERATORS = ["base", "prod", "scale-to-zero"]


def _pod_specs(resources: list[Resource]) -> list[Resource]:
    return [r["spec"]["template"]["spec"] for r in resources if r["kind"] in ("Deployment", "Job")]


def _worker_environment(resources: list[Resource]) -> dict[str, str]:
    """The environment a worker pod gets, with stand-ins for values Kubernetes fills in."""
    env = dict(worker_settings_data(resources))
    for item in worker_container(resources).get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = item["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = "trs-worker-7d9f8-abcde"
        elif "secretKeyRef" in source:
            env[item["name"]] = "secret-from-kubernetes"
        else:
            raise AssertionError(f"unexpected environment source {item}")
    return env


def _worker_config(resources: list[Resource], monkeypatch: pytest.MonkeyPatch) -> WorkerConfig:
    """The worker's configuration from the pod's environment alone, read as ``trs-worker`` reads it."""
    for name in [name for name in os.environ if name.startswith("TRS_")]:
        monkeypatch.delenv(name)
    for name, value in _worker_environment(resources).items():
        monkeypatch.setenv(name, value)
    return _settings({})


def _request_topics(resources: list[Resource]) -> list[Resource]:
    return [t for t in of_kind(resources, "KafkaTopic") if re.match(REQUEST_TOPIC_PATTERN, t["metadata"]["name"])]


def _service_of(request_topic_name: str) -> str:
    service = request_topic_name.removeprefix("trs-").removesuffix("-http-v1-send")
    assert request_topic(service) == request_topic_name
    return service


@pytest.mark.parametrize("overlay", ALL)
def test_every_setting_in_the_manifests_is_a_variable_the_worker_reads(overlay: str) -> None:
    resources = build(overlay)
    known = worker_variables()

    used = set(worker_settings_data(resources)) | {e["name"] for e in worker_container(resources).get("env", [])}

    assert {"TRS_KAFKA_BOOTSTRAP_SERVERS", "TRS_WORKER_INSTANCE_ID"} <= used
    assert used <= known, used - known


def test_a_misspelt_variable_is_caught() -> None:
    known = worker_variables()

    assert "TRS_WORKER_GRACE_PERIOD" in known
    assert "TRS_WORKER_GRACE_PERIOD_SECONDS" not in known
    assert "TRS_KAFKA_BOOTSTRAP" in known


@pytest.mark.parametrize("overlay", ALL)
def test_the_settings_parse_and_the_pod_outlasts_the_drain(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = build(overlay)
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]

    config = _worker_config(resources, monkeypatch)

    # After SIGTERM: grace_period for tasks in flight, then the final flush, then commit and leave.
    assert pod["terminationGracePeriodSeconds"] > config.worker.grace_period + FLUSH_TIMEOUT
    assert config.worker.instance_id == "trs-worker-7d9f8-abcde"
    (port,) = worker_container(resources)["ports"]
    assert (port["name"], port["containerPort"]) == ("http", config.worker.port)


@pytest.mark.parametrize("overlay", WITH_OPERATORS)
def test_the_worker_authenticates_as_the_kafka_user_over_tls(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = build(overlay)
    user = one(resources, "KafkaUser")
    container = worker_container(resources)
    env = {item["name"]: item for item in container["env"]}
    pod = one(resources, "Deployment")["spec"]["template"]["spec"]

    config = _worker_config(resources, monkeypatch)

    assert config.kafka.security_protocol == "SASL_SSL"
    assert config.kafka.sasl_mechanism == user["spec"]["authentication"]["type"].upper() == "SCRAM-SHA-512"
    assert config.kafka.sasl_username == user["metadata"]["name"]
    # The User Operator's Secret is named after the KafkaUser and holds its password.
    password = env["TRS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": user["metadata"]["name"], "key": "password"}
    assert "TRS_KAFKA_SASL_PASSWORD" not in worker_settings_data(resources)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert config.kafka.ssl_ca_location is not None
    ca_directory, ca_file = config.kafka.ssl_ca_location.rsplit("/", 1)
    ca_volume = volumes[mounts[ca_directory]]["secret"]
    assert {"key": "ca.crt", "path": ca_file} in ca_volume["items"]


def test_dev_speaks_plaintext_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    resources = build("dev")

    config = _worker_config(resources, monkeypatch)

    assert config.kafka.security_protocol == "PLAINTEXT"
    assert config.kafka.sasl_username is None
    assert config.kafka.sasl_password is None
    assert config.engine.allowed_targets == []
    assert one(resources, "Deployment")["spec"]["replicas"] == 1
    assert not [r for r in resources if r["kind"] in ("ScaledObject", "KafkaUser", "KafkaTopic", "ServiceMonitor")]
    job = one(resources, "Job", "trs-topics-init")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:3] == ["trs", "topics", "init"]
    assert container["image"] == worker_container(resources)["image"]
    assert container["envFrom"] == worker_container(resources)["envFrom"]


@pytest.mark.parametrize("overlay", ALL)
def test_the_worker_is_probed_on_its_endpoints(overlay: str) -> None:
    container = worker_container(build(overlay))

    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def _dockerfile_user() -> tuple[int, int]:
    users = re.findall(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    uid, gid = users[-1]
    return int(uid), int(gid)


@pytest.mark.parametrize("overlay", ALL)
def test_every_pod_is_locked_down(overlay: str) -> None:
    resources = build(overlay)
    uid, gid = _dockerfile_user()

    specs = _pod_specs(resources)

    assert specs
    for spec in specs:
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["runAsNonRoot"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}
    namespace = one(resources, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("overlay", ALL)
def test_workers_spread_across_nodes(overlay: str) -> None:
    deployment = one(build(overlay), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]

    by_key = {c["topologyKey"]: c for c in constraints}
    assert "kubernetes.io/hostname" in by_key
    for constraint in constraints:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("overlay", WITH_OPERATORS)
def test_keda_scales_the_deployment_on_the_group_s_lag(overlay: str) -> None:
    resources = build(overlay)
    deployment = one(resources, "Deployment")
    scaled = one(resources, "ScaledObject")
    auth = one(resources, "TriggerAuthentication")
    settings = worker_settings_data(resources)
    (trigger,) = scaled["spec"]["triggers"]
    metadata = trigger["metadata"]

    assert scaled["spec"]["scaleTargetRef"] == {"name": deployment["metadata"]["name"]}
    # The autoscaler owns the count; a replicas field would reset it at every apply.
    assert "replicas" not in deployment["spec"]
    assert trigger["type"] == "kafka"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert settings[metadata["bootstrapServersFromEnv"]]
    assert settings[metadata["consumerGroupFromEnv"]]
    assert "topic" not in metadata
    # The threshold is a fleet of full workers: each holds twice its in-flight limit (see keda.yaml).
    assert int(metadata["lagThreshold"]) == 2 * int(settings["TRS_WORKER_MAX_INFLIGHT"])
    assert metadata["offsetResetPolicy"] == "earliest"
    partitions = sum(t["spec"]["partitions"] for t in _request_topics(resources))
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= partitions


@pytest.mark.parametrize("overlay", WITH_OPERATORS)
def test_keda_uses_the_worker_s_own_credentials(overlay: str) -> None:
    resources = build(overlay)
    auth = one(resources, "TriggerAuthentication")["spec"]
    container = worker_container(resources)
    env = {item["name"]: item for item in container["env"]}
    volumes = {v["name"]: v for v in one(resources, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    (trigger,) = one(resources, "ScaledObject")["spec"]["triggers"]

    secrets = {ref["parameter"]: {"name": ref["name"], "key": ref["key"]} for ref in auth["secretTargetRef"]}
    from_env = {ref["parameter"]: ref for ref in auth["env"]}

    assert secrets["password"] == env["TRS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secrets["ca"]["name"] == volumes["kafka-ca"]["secret"]["secretName"]
    assert from_env["username"]["name"] in worker_settings_data(resources)
    assert from_env["username"]["containerName"] == container["name"]
    assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")


def test_scale_to_zero_lets_keda_remove_every_worker_and_silences_the_absent_alert() -> None:
    resources = build("scale-to-zero")
    scaled = one(resources, "ScaledObject")["spec"]
    (trigger,) = scaled["triggers"]
    alerts = [r.get("alert") for g in one(resources, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]

    assert scaled["minReplicaCount"] == 0
    assert trigger["metadata"]["activationLagThreshold"] == "0"
    assert "TrsWorkersAbsent" not in alerts
    assert "TrsWorkerDown" in alerts


@pytest.mark.parametrize("overlay", ALL)
def test_the_network_policy_lets_the_worker_reach_brokers_dns_and_its_targets(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = build(overlay)
    policy = one(resources, "NetworkPolicy")["spec"]
    pod_labels = one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]
    config = _worker_config(resources, monkeypatch)
    ports = [{(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]} for rule in policy["egress"]]

    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    for server in config.kafka.bootstrap_servers.split(","):
        assert any((int(server.rsplit(":", 1)[1]), "TCP") in rule for rule in ports), server
    assert any({(53, "UDP"), (53, "TCP")} <= rule for rule in ports)
    blocks = [peer["ipBlock"]["cidr"] for rule in policy["egress"] for peer in rule["to"] if "ipBlock" in peer]
    for target in config.engine.allowed_targets:
        if _is_network(target):
            assert any(_within(target, block) for block in blocks), target


def _is_network(target: str) -> bool:
    """Whether an allowlist entry is an address or CIDR (the others are host names)."""
    try:
        ipaddress.ip_network(target)
    except ValueError:
        return False
    return True


def _within(network: str, block: str) -> bool:
    inner, outer = ipaddress.ip_network(network), ipaddress.ip_network(block)
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


@pytest.mark.parametrize("overlay", WITH_OPERATORS)
def test_the_kafka_user_may_do_what_a_worker_does_and_no_more(overlay: str) -> None:
    resources = build(overlay)
    user = one(resources, "KafkaUser")
    settings = worker_settings_data(resources)
    acls = {
        (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], tuple(a["operations"]))
        for a in user["spec"]["authorization"]["acls"]
    }
    services = [_service_of(t["metadata"]["name"]) for t in _request_topics(resources)]

    expected = {
        ("group", settings["TRS_WORKER_GROUP_ID"], "prefix", ("Read",)),
        ("topic", CONTROL_TOPIC, "literal", ("Read",)),
        ("topic", DLQ_TOPIC, "literal", ("Write",)),
    }
    for service in services:
        expected.add(("topic", request_topic(service), "literal", ("Read",)))
        expected.add(("topic", reply_topic(service, ""), "prefix", ("Write",)))
    assert services
    assert acls == expected
    clusters = {r["metadata"]["labels"]["strimzi.io/cluster"] for r in [user, *of_kind(resources, "KafkaTopic")]}
    assert len(clusters) == 1


@pytest.mark.parametrize("overlay", WITH_OPERATORS)
def test_the_service_monitor_scrapes_every_worker(overlay: str) -> None:
    resources = build(overlay)
    monitor = one(resources, "ServiceMonitor")["spec"]
    service = one(resources, "Service")
    pod_labels = one(resources, "Deployment")["spec"]["template"]["metadata"]["labels"]

    (endpoint,) = monitor["endpoints"]

    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("overlay", ["base", "prod"])
def test_the_prometheus_rule_carries_the_rules_file(overlay: str) -> None:
    rules: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus" / "rules.yaml").read_text())

    rule = one(build(overlay), "PrometheusRule")

    assert rule["spec"]["groups"] == rules["groups"]
