"""``create_task_list``: copies of a template task, each with an id of its own.

A module-level function, so a script can build its tasks before, or without, a runner.
"""

from __future__ import annotations

from shared.errors import UsageError
from shared.models import Task, normalize_service_name

__all__ = ["create_task_list"]


def create_task_list(source: Task, n: int, *, service_name: str | None = None) -> list[Task]:
    """``n`` deep copies of ``source``, each with a fresh id.

    The copies carry ``service_name`` when it is given, else ``source``'s. The frozen ``policy``
    is shared, not copied.
    """
    if not isinstance(source, Task):
        raise UsageError(f"source must be a Task, got {type(source).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"n must be a non-negative integer, got {n!r}")
    if service_name is not None:
        try:
            service_name = normalize_service_name(service_name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    # Validating from a plain dump builds new headers lists and models for every copy. The policy
    # is frozen, so the copies can share it rather than each build three models of their own.
    template = source.model_dump(exclude={"id", "policy"})
    template["policy"] = source.policy
    if service_name is not None:
        template["service_name"] = service_name
    return [Task.model_validate(template) for _ in range(n)]
