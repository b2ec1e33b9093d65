"""deploy/Dockerfile passes hadolint (from PyPI, with the test extra), and keeps the image's rules."""

from __future__ import annotations

import ast
import re
import subprocess

from tests.deploy.manifests import DEPLOY, ROOT, venv_tool

DOCKERFILE = DEPLOY / "Dockerfile"
#: hadolint checks these labels are there and well formed.
OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.licenses": "spdx",
}


def _hadolint(dockerfile: str) -> subprocess.CompletedProcess[str]:
    labels = [option for label, kind in OCI_LABELS.items() for option in ("--require-label", f"{label}:{kind}")]
    return subprocess.run(
        [venv_tool("hadolint"), "--no-color", "--failure-threshold", "style", *labels, "-"],
        input=dockerfile,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_dockerfile_passes_hadolint_with_every_rule() -> None:
    completed = _hadolint(DOCKERFILE.read_text())

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stdout == ""


def test_hadolint_rejects_a_root_user_and_a_missing_label() -> None:
    text = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root")
    text = re.sub(r'\s*org\.opencontainers\.image\.licenses="MIT" \\', "", text)

    completed = _hadolint(text)

    assert completed.returncode != 0
    assert "DL3002" in completed.stdout
    assert "org.opencontainers.image.licenses" in completed.stdout


def test_the_final_stage_runs_as_a_numeric_user_on_the_pinned_base_without_pip() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    final = stages[-1]

    # A pinned base: a full Python version and Debian release, never a floating tag.
    (base,) = set(re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE))
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    assert len(stages) == 2
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    assert re.search(r"^USER \d+:\d+$", final, re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert "PYTHONUNBUFFERED=1" in final
    assert "pip uninstall --yes pip setuptools wheel" in final
    assert "pip install" not in final
    assert "COPY --from=build /opt/trs /opt/trs" in final


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE))

    assert "*" in ignore
    assert kept == {name for sources in copied for name in sources.split()}
    assert all((ROOT / name).exists() for name in kept)


def test_the_image_leaves_out_the_dev_tools_and_trs_still_loads_without_them() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    # Only an import at a module's top level runs whenever `trs` starts; `trs dev` imports its tools itself.
    top_level = [
        f"{path.relative_to(ROOT)}: {node.module}"
        for path in sorted((ROOT / "producer").glob("*.py"))
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("producer.dev")
    ]

    assert "producer/dev/" in ignore
    assert top_level == []
