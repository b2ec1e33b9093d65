"""Typed TRS errors and the stable set of error codes a task result may carry.

The tree is shallow so a caller can catch at the depth it needs::

    TrsError
    ├── TaskFailed                  a task ended with an error code (engine side)
    │   ├── TaskTimeout             timeout
    │   ├── ConnectFailed           connect_error
    │   ├── TlsFailed               tls_error
    │   ├── RetriesExhausted        retries_exhausted
    │   ├── ResponseTooLarge        response_too_large
    │   ├── TargetNotAllowed        target_not_allowed
    │   └── InternalError           internal
    ├── InvalidEnvelope             invalid_task: bytes on the wire that are not a valid envelope
    ├── BrokerUnavailable           the Kafka broker did not answer in time
    ├── TopicMissing                a topic TRS needs does not exist, and TRS won't create it here
    └── UsageError                  the caller misused the API (closed batch, bad arguments)

Every result carries a fixed message per code; exception text stays in the logs.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ERROR_MESSAGES",
    "BrokerUnavailable",
    "ConnectFailed",
    "ErrorCode",
    "InternalError",
    "InvalidEnvelope",
    "ResponseTooLarge",
    "RetriesExhausted",
    "TargetNotAllowed",
    "TaskFailed",
    "TaskTimeout",
    "TlsFailed",
    "TopicMissing",
    "TrsError",
    "UsageError",
]


class ErrorCode(StrEnum):
    """The stable codes of a task's error outcome. New members are a schema change."""

    TIMEOUT = "timeout"  #: the task's deadline passed before a response arrived
    CONNECT_ERROR = "connect_error"  #: the target could not be reached
    TLS_ERROR = "tls_error"  #: the TLS handshake failed (certificate, CA, client certificate)
    RETRIES_EXHAUSTED = "retries_exhausted"  #: every attempt got a retryable status
    CANCELLED = "cancelled"  #: the batch was cancelled, or a stopping worker cut the task, before it finished
    EXPIRED = "expired"  #: the deadline had passed before the task started
    INVALID_TASK = "invalid_task"  #: the task message could not be decoded or validated
    TARGET_NOT_ALLOWED = "target_not_allowed"  #: the target, or an address it resolves to, is outside the allowlist
    RESPONSE_TOO_LARGE = "response_too_large"  #: the response body exceeded the size limit
    NO_RESULT = "no_result"  #: no worker answered before the deadline plus grace
    CIRCUIT_OPEN = "circuit_open"  #: the target host's circuit breaker is open; the task was not sent
    INTERNAL = "internal"  #: an unexpected failure; details are in the logs only


#: The one message a result carries for each code. Fixed so results never leak internals.
ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.TIMEOUT: "the task's deadline passed before a response arrived",
    ErrorCode.CONNECT_ERROR: "could not connect to the target",
    ErrorCode.TLS_ERROR: "the TLS handshake with the target failed",
    ErrorCode.RETRIES_EXHAUSTED: "every attempt failed with a retryable outcome",
    ErrorCode.CANCELLED: "the task was cancelled before it finished",
    ErrorCode.EXPIRED: "the task's deadline passed before it started",
    ErrorCode.INVALID_TASK: "the task message is not a valid TRS task",
    ErrorCode.TARGET_NOT_ALLOWED: "the target is not on the allowlist",
    ErrorCode.RESPONSE_TOO_LARGE: "the response body exceeded the size limit",
    ErrorCode.NO_RESULT: "no result arrived before the task's deadline",
    ErrorCode.CIRCUIT_OPEN: "the target host keeps failing, so its circuit breaker is open; the task was not sent",
    ErrorCode.INTERNAL: "an internal error occurred",
}


class TrsError(Exception):
    """Base of every error TRS raises."""


class TaskFailed(TrsError):
    """A task ended with an error outcome; ``code`` says which."""

    code: ErrorCode = ErrorCode.INTERNAL


class TaskTimeout(TaskFailed):
    """The deadline passed before a response arrived."""

    code = ErrorCode.TIMEOUT


class ConnectFailed(TaskFailed):
    """The target refused or never answered the connection."""

    code = ErrorCode.CONNECT_ERROR


class TlsFailed(TaskFailed):
    """The TLS handshake failed."""

    code = ErrorCode.TLS_ERROR


class RetriesExhausted(TaskFailed):
    """Every attempt ended with a retryable outcome."""

    code = ErrorCode.RETRIES_EXHAUSTED


class ResponseTooLarge(TaskFailed):
    """The response body passed the size limit while it was read."""

    code = ErrorCode.RESPONSE_TOO_LARGE


class TargetNotAllowed(TaskFailed):
    """The target host, or an address it resolves to, is outside the allowlist."""

    code = ErrorCode.TARGET_NOT_ALLOWED


class InternalError(TaskFailed):
    """Anything unexpected; the original exception is the ``__cause__``."""

    code = ErrorCode.INTERNAL


class InvalidEnvelope(TrsError):
    """Kafka message bytes that are not a valid TRS envelope.

    ``reply_topic`` and ``task_id`` are whatever could still be read, so the caller
    can be sent an ``invalid_task`` result.
    """

    def __init__(self, reason: str, *, reply_topic: str | None = None, task_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_topic = reply_topic
        self.task_id = task_id


class BrokerUnavailable(TrsError):
    """The Kafka broker did not answer within the timeout."""


class TopicMissing(TrsError):
    """A topic TRS needs does not exist; ``trs topics init`` creates the shared ones."""


class UsageError(TrsError, ValueError):
    """The API was used the wrong way: a closed batch, a bad argument."""
