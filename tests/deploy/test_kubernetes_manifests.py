"""Every overlay builds with kustomize and passes the validators: Kubernetes' own schemas for the
built-in kinds (kubernetes-validate --strict) and the operators' CRD schemas for KEDA, Strimzi and
the Prometheus Operator (vendored in tests/data/crds)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.deploy.manifests import CRDS, KUBERNETES, OVERLAYS, build, build_text, crd_schema, one, venv_tool

#: The oldest Kubernetes the manifests support (the README says so) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.31", "1.37"]
OPERATOR_GROUPS = ("keda.sh/", "kafka.strimzi.io/", "monitoring.coreos.com/")


def _kubernetes_validate(paths: list[Path], versions: list[str]) -> subprocess.CompletedProcess[str]:
    # Files, not stdin: the validator reads its input once per version.
    options = [option for version in versions for option in ("--kubernetes-version", version)]
    return subprocess.run(
        [venv_tool("kubernetes-validate"), "--strict", *options, *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """kubernetes-validate's output lines for each overlay, from one run over all of them."""
    directory = tmp_path_factory.mktemp("built")
    paths = {}
    for overlay in ["base", *OVERLAYS]:
        paths[overlay] = directory / f"{overlay}.yaml"
        paths[overlay].write_text(build_text(overlay))

    completed = _kubernetes_validate(list(paths.values()), KUBERNETES_VERSIONS)

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    return {overlay: [line for line in lines if f" {path} " in line] for overlay, path in paths.items()}


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_each_overlay_passes_strict_kubernetes_validation(overlay: str, validated: dict[str, list[str]]) -> None:
    built_in = [r for r in build(overlay) if not r["apiVersion"].startswith(OPERATOR_GROUPS)]
    lines = validated[overlay]

    for version in KUBERNETES_VERSIONS:
        passed = [line for line in lines if line.startswith("INFO") and line.endswith(f"against version {version}")]
        assert len(passed) == len(built_in), lines
    # Only the operators' kinds lack a Kubernetes schema; they are checked against their CRDs below.
    for line in lines:
        assert line.startswith("INFO") or any(group in line for group in OPERATOR_GROUPS), line


def test_strict_kubernetes_validation_rejects_a_misspelt_field(tmp_path: Path) -> None:
    built = tmp_path / "dev.yaml"
    built.write_text(build_text("dev").replace("terminationGracePeriodSeconds:", "terminationGracePeriod:"))

    completed = _kubernetes_validate([built], KUBERNETES_VERSIONS[-1:])

    assert completed.returncode != 0
    assert "Additional properties are not allowed ('terminationGracePeriod' was unexpected)" in completed.stdout


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_operator_resources_match_their_crd_schemas(overlay: str) -> None:
    custom = [r for r in build(overlay) if r["apiVersion"].startswith(OPERATOR_GROUPS)]

    for resource in custom:
        schema = crd_schema(resource["apiVersion"], resource["kind"])
        assert schema is not None, f"no vendored CRD serves {resource['apiVersion']} {resource['kind']}"
        jsonschema.Draft7Validator(schema).validate(resource)


def test_base_has_every_operator_resource() -> None:
    kinds = sorted(r["kind"] for r in build("base") if r["apiVersion"].startswith(OPERATOR_GROUPS))

    assert kinds == [
        "KafkaTopic",
        "KafkaTopic",
        "KafkaTopic",
        "KafkaUser",
        "PrometheusRule",
        "ScaledObject",
        "ServiceMonitor",
        "TriggerAuthentication",
    ]


def test_the_crd_check_rejects_a_misspelt_field() -> None:
    scaled_object = one(build("prod"), "ScaledObject")
    scaled_object["spec"]["maxReplicas"] = scaled_object["spec"].pop("maxReplicaCount")
    schema = crd_schema(scaled_object["apiVersion"], "ScaledObject")
    assert schema is not None

    with pytest.raises(jsonschema.ValidationError, match="'maxReplicas' was unexpected"):
        jsonschema.Draft7Validator(schema).validate(scaled_object)


def test_the_crd_check_rejects_a_wrong_type() -> None:
    topic = one(build("prod"), "KafkaTopic", "trs-dlq")
    topic["spec"]["partitions"] = "3"
    schema = crd_schema(topic["apiVersion"], "KafkaTopic")
    assert schema is not None

    with pytest.raises(jsonschema.ValidationError, match="'3' is not of type 'integer'"):
        jsonschema.Draft7Validator(schema).validate(topic)


def test_the_example_secret_passes_strict_validation_and_is_in_no_overlay() -> None:
    example = KUBERNETES / "examples" / "kafka-credentials-secret.yaml"

    completed = _kubernetes_validate([example], KUBERNETES_VERSIONS)

    assert completed.returncode == 0, completed.stdout
    assert "passed for resource secret/trs-worker" in completed.stdout
    for overlay in ["base", *OVERLAYS]:
        assert not [r for r in build(overlay) if r["kind"] == "Secret"], overlay


def test_the_vendored_crds_are_the_files_their_readme_names() -> None:
    readme = (CRDS / "README.md").read_text()
    pattern = r"^\| `([^`]+)` \| (\S+) \| (\S+) \| ([0-9a-f]{40}) \| `([^`]+)` \| ([0-9a-f]{64}) \|$"
    rows = re.findall(pattern, readme, re.MULTILINE)

    assert {row[0] for row in rows} == {path.name for path in CRDS.glob("*.yaml")}
    for name, _repository, _tag, _commit, _path, sha256 in rows:
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == sha256, name
