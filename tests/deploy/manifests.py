"""The deploy/ manifests as the tools see them: kustomize builds, CRD schemas, the validators' paths.

``kubectl`` (for ``kubectl kustomize``), ``kubernetes-validate`` and ``hadolint`` come from PyPI
with the test extra, so they sit beside the interpreter; ``promtool`` is Debian's (see tests/tools.py).
"""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices

from consumer.settings import EngineSettings, WorkerSettings
from shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
CRDS = ROOT / "tests" / "data" / "crds"
OVERLAYS = ["dev", "prod", "scale-to-zero"]

Resource = dict[str, Any]


def venv_tool(name: str) -> str:
    """A command the test extra installs beside the interpreter."""
    path = Path(sys.executable).with_name(name)
    assert path.exists(), f"{name} is missing: install the test extra (pip install -e '.[test]')"
    return str(path)


@functools.cache
def _build(directory: Path) -> str:
    completed = subprocess.run(
        [venv_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def build_text(overlay: str) -> str:
    """``kubectl kustomize`` of an overlay (or ``base``), as YAML."""
    directory = KUBERNETES / "base" if overlay == "base" else KUBERNETES / "overlays" / overlay
    return _build(directory)


@functools.cache
def _parsed(overlay: str) -> list[Resource]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(build_text(overlay), Loader=loader) if doc]


def build(overlay: str) -> list[Resource]:
    """The resources of an overlay, parsed; each test gets its own copy."""
    return copy.deepcopy(_parsed(overlay))


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    """The only resource of ``kind`` (and ``name``)."""
    found = [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} resources of kind {kind} named {name}"
    return found[0]


def of_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind]


def worker_container(resources: list[Resource]) -> Resource:
    deployment = one(resources, "Deployment", "trs-worker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    container_: Resource = container
    return container_


def worker_settings_data(resources: list[Resource]) -> dict[str, str]:
    """The data of the ConfigMap the worker reads its settings from."""
    container = worker_container(resources)
    (source,) = container["envFrom"]
    data: dict[str, str] = one(resources, "ConfigMap", source["configMapRef"]["name"])["data"]
    return data


def worker_variables() -> set[str]:
    """Every ``TRS_*`` variable of the worker's three settings classes, aliases included."""
    names = set()
    for settings in (KafkaSettings, EngineSettings, WorkerSettings):
        prefix = settings.model_config.get("env_prefix", "")
        for field, info in settings.model_fields.items():
            if isinstance(info.validation_alias, AliasChoices):
                names |= {c for c in info.validation_alias.choices if isinstance(c, str) and c.startswith("TRS_")}
            else:
                names.add(f"{prefix}{field.upper()}")
    return names


def _crd_documents() -> Iterator[Resource]:
    for path in sorted(CRDS.glob("*.yaml")):
        yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], Resource]:
    schemas = {}
    for crd in _crd_documents():
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def crd_schema(api_version: str, kind: str) -> Resource | None:
    """The JSON schema of a custom resource from the vendored CRDs, strict as ``kubectl --validate=strict``.

    An API server prunes unknown fields of a custom resource; kubectl's strict field validation
    rejects them instead, which is what catches a misspelt field here. So every object schema
    with properties and no ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties:
    false``, and OpenAPI's ``nullable`` becomes a JSON Schema type. CEL rules
    (``x-kubernetes-validations``) are not evaluated.
    """
    schema = _crd_schemas().get((api_version, kind))
    return None if schema is None else _strict(copy.deepcopy(schema))


def _strict(schema: Resource) -> Resource:
    for name, field in schema.get("properties", {}).items():
        schema["properties"][name] = _strict(field)
    for keyword in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(keyword), dict):
            schema[keyword] = _strict(schema[keyword])
    for keyword in ("allOf", "anyOf", "oneOf"):
        if keyword in schema:
            schema[keyword] = [_strict(choice) for choice in schema[keyword]]
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema
