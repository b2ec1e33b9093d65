"""URL lists: plain GETs for ``trs run --url`` and ``--urls``, with no JSON to write.

A URL file holds one URL a line; blank lines and lines that start with ``#`` are skipped. Each task
is labelled with its line number, as a task file's are; each ``--url`` with its place among them.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from producer.task_file import LineProblems, validation_reason
from shared.models import HttpRequest, Task

__all__ = ["get_task", "parse_urls"]


def get_task(url: str, *, service: str, labels: dict[str, str]) -> Task:
    """A GET of ``url``; raises ``ValueError`` saying what is wrong with the URL."""
    try:
        request = HttpRequest(url=url)
    except ValidationError as exc:
        raise ValueError(validation_reason(exc, HttpRequest).removeprefix("url: ")) from None
    return Task(service_name=service, request=request, labels=labels)


def parse_urls(lines: Iterable[str], *, name: str, service: str) -> list[Task]:
    """A GET per URL of ``lines``; raises ``TaskFileError`` naming every bad line."""
    problems = LineProblems(name)
    tasks = []
    for number, line in enumerate(lines, start=1):
        url = line.strip()
        if not url or url.startswith("#"):
            continue
        try:
            tasks.append(get_task(url, service=service, labels={"line": str(number)}))
        except ValueError as exc:
            problems.add(number, str(exc))
    problems.raise_if_any()
    return tasks
