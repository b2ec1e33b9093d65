"""Task files: one task per line, as the JSON of the ``Task`` model (JSON Lines).

Blank lines are skipped. A line that isn't JSON, or isn't a valid task, stops the read with its
line number and the reason, so a bad file never runs half-way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from shared.errors import TrsError
from shared.models import Task

__all__ = ["TaskFileError", "parse_tasks", "read_tasks"]


class TaskFileError(TrsError):
    """A line of a task file is not a valid task; the message names the line."""


def read_tasks(path: Path) -> list[Task]:
    """The tasks of the file at ``path``."""
    with path.open(encoding="utf-8") as lines:
        return parse_tasks(lines, name=str(path))


def parse_tasks(lines: Iterable[str], *, name: str = "<tasks>") -> list[Task]:
    tasks = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(f"{name}:{number}: not valid JSON: {exc.msg}") from None
        try:
            tasks.append(Task.model_validate_json(line))
        except ValidationError as exc:
            raise TaskFileError(f"{name}:{number}: {_reason(exc)}") from None
    return tasks


def _reason(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "task"
    more = exc.error_count() - 1
    return f"{location}: {first['msg']}" + (f" (and {more} more)" if more else "")
