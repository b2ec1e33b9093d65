"""The deploy/ manifests, checked by tools nobody here wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.tools import require_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CORE_MANIFESTS = ["namespace.yaml", "deployment.yaml", "service.yaml", "poddisruptionbudget.yaml"]


def test_kubernetes_manifests_pass_strict_validation() -> None:
    files = [str(DEPLOY / "kubernetes" / name) for name in CORE_MANIFESTS]
    validator = Path(sys.executable).with_name("kubernetes-validate")

    completed = subprocess.run(
        [str(validator), "--strict", "--no-warn", *files], capture_output=True, text=True, check=False
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout.count("passed") == len(files)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())

    listed = set(kustomization["resources"])
    present = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_worker_probes_point_at_the_worker_endpoints() -> None:
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env["TRS_WORKER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    grace = float(env["TRS_WORKER_GRACE_PERIOD"]["value"])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_prometheus_rules_pass_promtool() -> None:
    promtool = require_tool("promtool", "prometheus")

    completed = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "SUCCESS" in completed.stdout


def test_every_worker_variable_in_the_deployment_is_one_the_worker_reads() -> None:
    from consumer.cli import _FLAGS, _envvar

    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    known = {_envvar(settings, field) for _, settings, field, _ in _FLAGS} | {"TRS_ENGINE_INSECURE"}

    used = {item["name"] for item in container["env"] if item["name"].startswith("TRS_")}

    assert used
    assert used <= known, used - known
    assert container["ports"][0]["containerPort"] == 8080
