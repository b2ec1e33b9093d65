"""The TRS client library: build tasks, launch batches, read results as they complete."""

from producer.batch import Batch, BatchState
from producer.runner import TaskRunner
from producer.sync import run
from shared.engine import TlsConfig
from shared.errors import ErrorCode, TrsError, UsageError
from shared.models import (
    ClientPolicy,
    HttpRequest,
    HttpResponse,
    RetryPolicy,
    Task,
    TaskError,
    TaskResult,
    TransportPolicy,
)

__all__ = [
    "Batch",
    "BatchState",
    "ClientPolicy",
    "ErrorCode",
    "HttpRequest",
    "HttpResponse",
    "RetryPolicy",
    "Task",
    "TaskError",
    "TaskResult",
    "TaskRunner",
    "TlsConfig",
    "TransportPolicy",
    "TrsError",
    "UsageError",
    "run",
]
