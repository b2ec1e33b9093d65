"""The lines ``trs run`` writes: one JSON object a result, with what a person needs to match it to its task.

A line is the ``TaskResult`` (``task_id``, ``response``, ``error``, ``attempts``, ``elapsed``) plus the
task's ``method``, ``url`` and ``labels``, taken from the task itself, so they are there in both
modes whatever the worker sends back. Bodies are standard base64. Lines are ASCII: a header the
target sent in another encoding can't make a line that isn't valid UTF-8.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from shared.models import HttpResponse, Task, TaskError, TaskResult

__all__ = ["result_line"]


def result_line(task: Task, result: TaskResult) -> str:
    """The JSON line of ``result``, the outcome of ``task``, without its newline."""
    line = {
        "task_id": str(result.task_id),
        "method": task.request.method,
        "url": task.request.url,
        "labels": task.labels,
        "response": None if result.response is None else _response(result.response),
        "error": None if result.error is None else _error(result.error),
        "attempts": result.attempts,
        "elapsed": result.elapsed,
    }
    return json.dumps(line, separators=(",", ":"))


def _response(response: HttpResponse) -> dict[str, Any]:
    return {
        "status_code": response.status_code,
        "headers": [[name, value] for name, value in response.headers],
        "body": base64.b64encode(response.body).decode("ascii"),
    }


def _error(error: TaskError) -> dict[str, Any]:
    return {"code": str(error.code.value), "message": error.message, "status_code": error.status_code}
