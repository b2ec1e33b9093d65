"""The TRS contract: tasks, policies, results and the Kafka envelopes, as pydantic v2 models.

This module is the single source of truth for every field. The wire format is the JSON of
these models (bytes as base64); there is no second, hand-written schema.

Durations are seconds (floats). Header lists keep order and allow a name to repeat.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Final, Literal, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.errors import ERROR_MESSAGES, ErrorCode

__all__ = [
    "DEFAULT_TIMEOUT",
    "SCHEMA_VERSION",
    "CancelEnvelope",
    "ClientPolicy",
    "HttpRequest",
    "HttpResponse",
    "ReleaseNotice",
    "ResultEnvelope",
    "RetryPolicy",
    "ServiceName",
    "Task",
    "TaskEnvelope",
    "TaskError",
    "TaskResult",
    "TransportPolicy",
    "normalize_service_name",
]

#: The envelope schema this code reads and writes.
SCHEMA_VERSION: Final[Literal[1]] = 1
#: Seconds one task may take, across every attempt, when the caller sets nothing.
DEFAULT_TIMEOUT = 30.0
#: Longest accepted service name; keeps every derived topic name under Kafka's 249 characters.
MAX_SERVICE_NAME_LENGTH = 100

_SERVICE_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: An http(s) URL with a host and no white space: scheme, optional user info, host, the rest.
_PLAIN_HTTP_URL_RE = re.compile(r"(?i:https?)://(?:[^\s/?#@]*@)?[^\s/?#:@][^\s/?#@]*(?:[/?#]\S*)?\Z")

_BINARY_AS_BASE64 = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
Header = tuple[str, str]


@functools.lru_cache(maxsize=1024)
def normalize_service_name(name: str) -> str:
    """Lower-case ``name``, turn ``_`` into ``-`` and check it can be part of a topic name.

    Raises ``ValueError`` with the reason; ``Task`` and the topic helpers both use this. Every task
    a worker decodes names its service, and there are few services, so answers are remembered.
    """
    normalized = name.strip().lower().replace("_", "-")
    if not normalized:
        raise ValueError("service name is empty")
    if len(normalized) > MAX_SERVICE_NAME_LENGTH:
        raise ValueError(f"service name is longer than {MAX_SERVICE_NAME_LENGTH} characters")
    if not _SERVICE_NAME_RE.match(normalized):
        raise ValueError(
            f"service name {name!r} can't form a Kafka topic name: use letters, digits, '-' or '_',"
            " starting and ending with a letter or digit"
        )
    return normalized


ServiceName = Annotated[str, AfterValidator(normalize_service_name)]


def url_problem(url: str) -> PydanticCustomError | None:
    """What makes ``url`` unusable as a task's URL (not http or https, no host, white space), or ``None``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return PydanticCustomError("url_scheme", "URL scheme must be http or https, got {url!r}", {"url": url})
    host = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
    if not host or host.startswith(":"):
        return PydanticCustomError("url_host", "URL has no host: {url!r}", {"url": url})
    if any(c in url for c in " \r\n\t"):
        return PydanticCustomError("url_space", "URL contains whitespace: {url!r}", {"url": url})
    return None


def _check_header(header: Header) -> Header:
    name, value = header
    if not _HEADER_NAME_RE.match(name):
        raise ValueError(f"header name {name!r} is not a valid HTTP token")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"header {name!r} has a CR, LF or NUL in its value")
    return header


RequestHeader = Annotated[Header, AfterValidator(_check_header)]


class HttpRequest(BaseModel):
    """One HTTP request. ``headers`` is an ordered list of pairs; a name may repeat."""

    model_config = _BINARY_AS_BASE64 | ConfigDict(frozen=False)

    method: str = "GET"
    url: str
    headers: list[RequestHeader] = Field(default_factory=list)
    body: bytes = b""

    @field_validator("method")
    @classmethod
    def _method_is_token(cls, method: str) -> str:
        upper = method.upper()
        if not _METHOD_RE.match(upper):
            raise ValueError(f"method {method!r} is not an HTTP method")
        return upper

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, url: str) -> str:
        # One regular expression accepts the usual URL, a subset of what ``url_problem`` accepts;
        # that runs only for the rest, and says what is wrong.
        if _PLAIN_HTTP_URL_RE.match(url):
            return url
        problem = url_problem(url)
        if problem is not None:
            raise problem
        return url

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


class RetryPolicy(BaseModel):
    """When and how often a task is retried.

    Connection errors, 429 and 5xx except 501 are retried ``retries`` times. The delay
    before retry ``n`` (1-based) is ``backoff_initial * 2**(n-1)`` with full jitter, capped at
    ``backoff_max``; a ``Retry-After`` header replaces it when it fits in the deadline.
    """

    model_config = ConfigDict(frozen=True)

    retries: int = Field(default=3, ge=0, le=100)
    backoff_initial: float = Field(default=0.1, gt=0, le=60)
    backoff_max: float = Field(default=5.0, gt=0, le=600)
    honor_retry_after: bool = True

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Self:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")
        return self


class TransportPolicy(BaseModel):
    """Connection-pool settings: the fields of Go TRS's ``HttpTxPolicy``.

    ``None`` means "the transport's default".
    """

    model_config = ConfigDict(frozen=True)

    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    max_connections_per_host: int | None = Field(default=None, ge=1, le=100_000)
    idle_timeout: float | None = Field(default=90.0, gt=0)
    response_header_timeout: float | None = Field(default=None, gt=0)
    tls_handshake_timeout: float | None = Field(default=10.0, gt=0)
    keep_alive: bool = True


class ClientPolicy(BaseModel):
    """Retry plus transport policy; Go TRS's ``ClientPolicy``."""

    model_config = ConfigDict(frozen=True)

    # The policies are frozen, so every default can be the one shared instance: a task that sets no
    # policy then costs no policy models of its own (there are often 100,000 tasks in memory).
    retry: RetryPolicy = RetryPolicy()
    transport: TransportPolicy = TransportPolicy()


class Task(BaseModel):
    """One unit of work: an HTTP request with its timeout and policy.

    ``timeout`` is the one deadline, in seconds, that covers every attempt. An ``ignore``d
    task is never sent and yields no result.
    """

    model_config = ConfigDict(validate_assignment=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    service_name: ServiceName
    request: HttpRequest
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=86_400)
    policy: ClientPolicy = ClientPolicy()
    ignore: bool = False


class HttpResponse(BaseModel):
    """The response a task got: any status code, with its headers and body."""

    model_config = _BINARY_AS_BASE64

    status_code: int = Field(ge=100, le=999)
    headers: list[Header] = Field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


class TaskError(BaseModel):
    """A typed error outcome: a stable ``code`` and a fixed, human-readable ``message``."""

    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str
    #: The last status code seen, when retries ran out on a retryable status.
    status_code: int | None = Field(default=None, ge=100, le=999)

    @classmethod
    def of(cls, code: ErrorCode) -> TaskError:
        """The error for ``code`` with its fixed message."""
        return cls(code=code, message=ERROR_MESSAGES[code])


class TaskResult(BaseModel):
    """Exactly one outcome of a task: a ``response`` or an ``error``, never both."""

    task_id: uuid.UUID
    response: HttpResponse | None = None
    error: TaskError | None = None
    attempts: int = Field(default=0, ge=0)
    elapsed: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _exactly_one_outcome(self) -> Self:
        if (self.response is None) == (self.error is None):
            raise ValueError("a result has exactly one of response or error")
        return self

    @property
    def ok(self) -> bool:
        """True when the task got a response (of any status code)."""
        return self.response is not None

    @property
    def outcome(self) -> str:
        """``"response"`` or the error code; the label metrics and summaries use."""
        return "response" if self.error is None else self.error.code.value


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskEnvelope(BaseModel):
    """A task on the request topic, with what the worker needs to answer it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    reply_topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    deadline: AwareDatetime
    task: Task

    @property
    def task_id(self) -> uuid.UUID:
        return self.task.id


class ResultEnvelope(BaseModel):
    """A task's result on its batch's reply topic."""

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str = Field(min_length=1, max_length=64)
    result: TaskResult
    worker: str | None = None


class CancelEnvelope(BaseModel):
    """A cancel order on the control topic, keyed by batch id."""

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str = Field(min_length=1, max_length=64)
    deadline: AwareDatetime
    issued_at: AwareDatetime = Field(default_factory=utc_now)


class ReleaseNotice(BaseModel):
    """A notice on the control topic: these reply topics are about to be deleted.

    A client still reading one of them lets go of it first, because a fetch for a topic deleted
    under the reader can crash librdkafka (see ``producer.reply_reader``).
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    topics: list[Annotated[str, Field(min_length=1, max_length=249)]] = Field(min_length=1, max_length=500)
    issued_at: AwareDatetime = Field(default_factory=utc_now)
