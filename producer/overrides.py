"""What ``trs run``'s ``--timeout``, ``--retries`` and ``--header`` change in every task of the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from producer.task_file import validation_reason
from shared.models import ClientPolicy, HttpRequest, Task

__all__ = ["TaskOverrides", "parse_header"]


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` as a checked header pair; raises ``ValueError`` saying what is wrong."""
    name, colon, value = text.partition(":")
    if not colon:
        raise ValueError(f"{text[:40]!r} is not a header: write it as 'Name: value'")
    pair = (name.strip(), value.strip())
    try:
        HttpRequest(url="http://localhost/", headers=[pair])
    except ValidationError as exc:
        raise ValueError(validation_reason(exc, HttpRequest).removeprefix("headers.0: ")) from None
    return pair


@dataclass(frozen=True)
class TaskOverrides:
    """Settings that replace each task's own; ``None`` and no headers leave the task as it is.

    A header replaces every header of the task with its name (case-insensitive); naming one twice
    sends it twice.
    """

    timeout: float | None = None
    retries: int | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def apply(self, tasks: Sequence[Task]) -> None:
        replaced = {name.lower() for name, _ in self.headers}
        # Most tasks share one frozen policy; each policy's new version is made once, and shared too.
        # The old policy is kept with it, so its id can't be reused by another while this runs.
        policies: dict[int, tuple[ClientPolicy, ClientPolicy]] = {}
        for task in tasks:
            if self.timeout is not None:
                task.timeout = self.timeout
            if self.retries is not None:
                if id(task.policy) not in policies:
                    policies[id(task.policy)] = (task.policy, self._retried(task.policy))
                task.policy = policies[id(task.policy)][1]
            if self.headers:
                kept = [h for h in task.request.headers if h[0].lower() not in replaced]
                task.request.headers = kept + list(self.headers)

    def _retried(self, policy: ClientPolicy) -> ClientPolicy:
        return policy.model_copy(update={"retry": policy.retry.model_copy(update={"retries": self.retries})})
