"""The TRS client library: build tasks, launch batches, read results as they complete."""

from producer.batch import Batch, BatchState
from producer.runner import TaskRunner
from producer.sync import run
from producer.task_list import create_task_list
from shared.engine import MockTransport, TlsConfig, Transport
from shared.errors import (
    BrokerUnavailable,
    ConnectFailed,
    ErrorCode,
    TaskTimeout,
    TlsFailed,
    TopicMissing,
    TrsError,
    UsageError,
)
from shared.models import (
    BreakerPolicy,
    ClientPolicy,
    HostPolicy,
    HttpRequest,
    HttpResponse,
    RampPolicy,
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
    "ConnectFailed",
    "ErrorCode",
    "HostPolicy",
    "HttpRequest",
    "HttpResponse",
    "MockTransport",
    "RampPolicy",
    "RetryPolicy",
    "Task",
    "TaskError",
    "TaskResult",
    "TaskRunner",
    "TaskTimeout",
    "TlsConfig",
    "TlsFailed",
    "TopicMissing",
    "Transport",
    "TransportPolicy",
    "TrsError",
    "UsageError",
    "create_task_list",
    "run",
]
