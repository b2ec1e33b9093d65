"""ARCHITECTURE.md stays true: its code map names every module, and every module it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "producer", "consumer")
#: A package's own files, which the code map names by the package's folder instead.
PACKAGE_FILES = {"__init__.py", "__main__.py"}
_NAMED_RE = re.compile(r"`((?:shared|producer|consumer|tests|benchmarks)/[\w/]+\.py)`")


def named_modules(text: str) -> set[str]:
    return set(_NAMED_RE.findall(text))


def code_modules() -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name not in PACKAGE_FILES
    }


def test_the_code_map_names_every_module_and_only_modules_that_exist() -> None:
    named = named_modules((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))

    assert sorted(code_modules() - named) == []
    assert sorted(name for name in named if not (ROOT / name).is_file()) == []


def test_the_reader_finds_module_paths_in_backquotes_only() -> None:
    text = "`shared/wire.py` and `producer/dev/cluster.py`, but not shared/errors.py or `shared/`"

    assert named_modules(text) == {"shared/wire.py", "producer/dev/cluster.py"}
