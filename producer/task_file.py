"""Task files: one task per line, as the JSON of the ``Task`` model (JSON Lines).

Blank lines are skipped. Keys are strict: an unknown one is an error, with the nearest known key as
a hint. Every task must name the batch's service. A file with bad lines never runs half-way, and
one read reports every bad line (the first ``MAX_REPORTED`` of them, then how many more), so one
run shows all there is to fix.

Each task is labelled with its line number (``{"line": "12"}``), merged with the labels the line
gives; a ``line`` label of the file's own is kept.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from shared.errors import TrsError
from shared.models import Task, normalize_service_name

__all__ = ["MAX_REPORTED", "LineProblems", "TaskFileError", "parse_tasks", "read_tasks", "validation_reason"]

#: Bad lines a message lists before it says how many more there are.
MAX_REPORTED = 20
#: What an id that isn't a UUID is told; a human name for a task belongs in its labels.
ID_NOT_UUID = (
    'id must be a UUID, or left out to get a fresh one; a name of your own goes in labels, such as "labels": '
    '{"name": "web-1"}'
)


class TaskFileError(TrsError):
    """Lines of a task file are not valid tasks; the message names each line and what is wrong."""


class LineProblems:
    """The bad lines of one input, each with its reason; the first ``MAX_REPORTED`` make the message."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self._shown: list[str] = []

    def add(self, number: int, reason: str) -> None:
        self.count += 1
        if len(self._shown) < MAX_REPORTED:
            self._shown.append(f"{self.name}:{number}: {reason}")

    def raise_if_any(self) -> None:
        if not self.count:
            return
        hidden = self.count - len(self._shown)
        more = [f"and {hidden} more bad lines"] if hidden else []
        raise TaskFileError("\n".join(self._shown + more))


def read_tasks(path: Path, *, service: str | None = None) -> list[Task]:
    """The tasks of the file at ``path``; ``-`` reads standard input."""
    if str(path) == "-":
        return parse_tasks(sys.stdin, name="<stdin>", service=service)
    with path.open(encoding="utf-8") as lines:
        return parse_tasks(lines, name=str(path), service=service)


def parse_tasks(lines: Iterable[str], *, name: str = "<tasks>", service: str | None = None) -> list[Task]:
    """The tasks of ``lines``, all of the batch's service: ``service``, or else the first task's.

    Raises ``TaskFileError`` naming every bad line.
    """
    problems = LineProblems(name)
    batch_service = normalize_service_name(service) if service is not None else None
    tasks = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(number, f"not valid JSON: {exc.msg}")
            continue
        try:
            task = Task.model_validate_json(line)
        except ValidationError as exc:
            problems.add(number, validation_reason(exc, Task))
            continue
        batch_service = batch_service or task.service_name
        if task.service_name != batch_service:
            problems.add(
                number,
                f"service_name {task.service_name!r} differs from the batch's {batch_service!r}: "
                "a batch runs under one service (split the file, or run each part with --service)",
            )
            continue
        task.labels = {"line": str(number), **task.labels}
        tasks.append(task)
    problems.raise_if_any()
    return tasks


def validation_reason(exc: ValidationError, model: type[BaseModel]) -> str:
    """Each error of ``exc`` as ``location: message``, joined by ``; ``."""
    return "; ".join(_error_reason(error, model) for error in exc.errors(include_url=False))


def _error_reason(error: ErrorDetails, model: type[BaseModel]) -> str:
    location = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {location!r}" + _hint(model, error["loc"])
    if error["loc"] == ("id",) and error["type"].startswith("uuid"):
        return ID_NOT_UUID
    # A validator's ValueError reads "Value error, <its message>": the message alone says it.
    return f"{location or 'task'}: {error['msg'].removeprefix('Value error, ')}"


def _hint(model: type[BaseModel], location: tuple[int | str, ...]) -> str:
    """`` (did you mean 'timeout'?)`` for the known key nearest the unknown one, or nothing."""
    known = _keys_at(model, location[:-1])
    close = difflib.get_close_matches(str(location[-1]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names of the model found by following ``path`` from ``model``; none if it leads elsewhere."""
    current: Any = model
    for part in path:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        current = field.annotation if field is not None else None
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
    return list(current.model_fields)
