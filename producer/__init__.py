"""The TRS client library: build tasks, launch batches, read results as they complete."""

from producer.batch import Batch, BatchState
from producer.runner import TaskRunner
from producer.sync import run
from shared.engine import TlsConfig
from shared.errors import BrokerUnavailable, ErrorCode, TopicMissing, TrsError, UsageError
from shared.models import (
    BreakerPolicy,
    ClientPolicy,
    HostPolicy,
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
    "BreakerPolicy",
    "BrokerUnavailable",
    "ClientPolicy",
    "ErrorCode",
    "HostPolicy",
    "HttpRequest",
    "HttpResponse",
    "RetryPolicy",
    "Task",
    "TaskError",
    "TaskResult",
    "TaskRunner",
    "TlsConfig",
    "TopicMissing",
    "TransportPolicy",
    "TrsError",
    "UsageError",
    "run",
]
