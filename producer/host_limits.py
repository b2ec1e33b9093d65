"""Per-host limits set for a whole batch, as ``trs run --per-host`` and ``--rate-per-host`` do."""

from __future__ import annotations

from collections.abc import Sequence

from shared.models import ClientPolicy, Task

__all__ = ["with_host_limits"]


def with_host_limits(tasks: Sequence[Task], *, per_host: int | None, rate_per_host: float | None) -> list[Task]:
    """``tasks`` with the cap and the rate given set in each one's host policy; the rest of it stays."""
    changes: dict[str, int | float] = {}
    if per_host is not None:
        changes["max_concurrent_per_host"] = per_host
    if rate_per_host is not None:
        changes["rate_per_host"] = rate_per_host
    if not changes:
        return list(tasks)
    # Tasks mostly share a few policy objects: each distinct one is rebuilt (and validated) once.
    rebuilt: dict[int, ClientPolicy] = {}
    out = []
    for task in tasks:
        policy = rebuilt.get(id(task.policy))
        if policy is None:
            host = task.policy.host.model_validate({**task.policy.host.model_dump(), **changes})
            policy = rebuilt[id(task.policy)] = task.policy.model_copy(update={"host": host})
        out.append(task.model_copy(update={"policy": policy}))
    return out
