"""The TRS contract: tasks, policies, results and the Kafka envelopes, as pydantic v2 models.

This module is the single source of truth for every field. The wire format is the JSON of
these models (bytes as base64); there is no second, hand-written schema.

Durations are seconds (floats). Header lists keep order and allow a name to repeat.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self

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
from shared.redaction import redact, redact_headers, redact_url

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_HEADER_LENGTH",
    "MAX_REQUEST_HEADERS",
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

#: Most headers a request may carry (Apache's default limit of request fields).
MAX_REQUEST_HEADERS = 100
#: Longest header accepted, name and value together, in characters (about what servers allow per header line).
MAX_HEADER_LENGTH = 8192

# Each pattern is matched with ``\Z``: ``$`` would also match before a trailing newline.
_SERVICE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_METHOD_RE = re.compile(r"[A-Z]{1,20}\Z")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: A header value holds no control character but tab (RFC 9110), and no lone surrogate, which no
#: transport can encode.
_HEADER_VALUE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]*\Z")
#: An http(s) URL with a host, no user info, and no white space or control character.
_PLAIN_HTTP_URL_RE = re.compile(
    r"(?i:https?)://[^\s\x00-\x1f\x7f/?#:@][^\s\x00-\x1f\x7f/?#@]*(?:[/?#][^\s\x00-\x1f\x7f]*)?\Z"
)
_URL_BAD_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f]")
_URL_AUTHORITY_END_RE = re.compile(r"[/?#]")
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}(?=:)")
#: Kafka refuses these two topic names, though each matches the allowed characters.
_RESERVED_TOPIC_NAMES = frozenset({".", ".."})

_BINARY_AS_BASE64 = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
#: For every model that holds a request or a response: a validation error's text never echoes
#: the input, which may be a credential header or a URL with a password.
_NO_INPUT_IN_ERRORS = ConfigDict(hide_input_in_errors=True)
#: For every model a caller writes (task files, ``Task(...)``, the task in an envelope): an unknown key is an
#: error, never ignored, so a misspelt ``timout`` can't run with the default. A worker refuses a task
#: with a field it doesn't know (it ends ``invalid_task``): upgrade workers before clients. The frozen
#: policies spell ``extra="forbid"`` out, so that mypy's pydantic plugin still sees them frozen.
_NO_UNKNOWN_KEYS = ConfigDict(extra="forbid")
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
    """What makes ``url`` unusable as a task's URL, or ``None``.

    It must be http or https, with a host, and free of white space and control characters. User
    info (``user:password@``) is refused: a password in a URL would sit in every task record,
    dead letter and log line that carries the URL, while an ``Authorization`` header stays out of
    them. No message repeats the URL, so none can leak what it carries.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        shown = _URL_SCHEME_RE.match(url)
        got = f", got {shown.group()!r}" if shown else ""
        return PydanticCustomError("url_scheme", "URL scheme must be http or https{got}", {"got": got})
    if _URL_BAD_CHAR_RE.search(url):
        return PydanticCustomError("url_space", "URL contains white space or a control character")
    authority = _URL_AUTHORITY_END_RE.split(rest, maxsplit=1)[0]
    if "@" in authority:
        return PydanticCustomError(
            "url_userinfo",
            "URL must not carry user info (user:password@): send credentials in an Authorization header",
        )
    if not authority or authority.startswith(":"):
        return PydanticCustomError("url_host", "URL has no host")
    return None


def _check_header(header: Header) -> Header:
    name, value = header
    if len(name) + len(value) > MAX_HEADER_LENGTH:
        raise ValueError(f"header {_shown(name)} is over {MAX_HEADER_LENGTH} characters, name and value together")
    if not _HEADER_NAME_RE.match(name):
        # A whole "Name: value" line passed as a name would show its value.
        raise ValueError(f"header name {redact(_shown(name))} is not a valid HTTP token")
    # Printable ASCII, the usual value, passes without the regular expression.
    if not (value.isascii() and value.isprintable()) and not _HEADER_VALUE_RE.match(value):
        raise ValueError(
            f"header {name!r} has a CR, LF or NUL, another control character or a lone surrogate in its value"
        )
    return header


def _shown(text: str, limit: int = 40) -> str:
    """``text`` quoted for an error message, cut at ``limit`` characters so hostile input stays short."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}..."


RequestHeader = Annotated[Header, AfterValidator(_check_header)]


class HttpRequest(BaseModel):
    """One HTTP request. ``headers`` is an ordered list of pairs; a name may repeat."""

    model_config = _BINARY_AS_BASE64 | _NO_INPUT_IN_ERRORS | _NO_UNKNOWN_KEYS | ConfigDict(frozen=False)

    method: str = "GET"
    url: str
    headers: list[RequestHeader] = Field(default_factory=list, max_length=MAX_REQUEST_HEADERS)
    body: bytes = b""

    @field_validator("method")
    @classmethod
    def _method_is_token(cls, method: str) -> str:
        upper = method.upper()
        if not _METHOD_RE.match(upper):
            raise ValueError(f"method {_shown(method)} is not an HTTP method")
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

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Reprs reach logs and tracebacks: credentials stay out of them.
        for name, value in super().__repr_args__():
            if name == "url":
                yield name, redact_url(value)
            elif name == "headers":
                yield name, redact_headers(value)
            else:
                yield name, value


class RetryPolicy(BaseModel):
    """When and how often a task is retried.

    Connection errors, 429 and 5xx except 501 are retried ``retries`` times. The delay
    before retry ``n`` (1-based) is ``backoff_initial * 2**(n-1)`` with full jitter, capped at
    ``backoff_max``; a ``Retry-After`` header replaces it when it fits in the deadline.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    max_connections_per_host: int | None = Field(default=None, ge=1, le=100_000)
    idle_timeout: float | None = Field(default=90.0, gt=0)
    response_header_timeout: float | None = Field(default=None, gt=0)
    tls_handshake_timeout: float | None = Field(default=10.0, gt=0)
    keep_alive: bool = True


class ClientPolicy(BaseModel):
    """Retry plus transport policy; Go TRS's ``ClientPolicy``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The policies are frozen, so every default can be the one shared instance: a task that sets no
    # policy then costs no policy models of its own (there are often 100,000 tasks in memory).
    retry: RetryPolicy = RetryPolicy()
    transport: TransportPolicy = TransportPolicy()


class Task(BaseModel):
    """One unit of work: an HTTP request with its timeout and policy.

    ``timeout`` is the one deadline, in seconds, that covers every attempt. An ``ignore``d
    task is never sent and yields no result.
    """

    model_config = _NO_INPUT_IN_ERRORS | _NO_UNKNOWN_KEYS | ConfigDict(validate_assignment=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    service_name: ServiceName
    request: HttpRequest
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=86_400)
    policy: ClientPolicy = ClientPolicy()
    ignore: bool = False
    labels: dict[str, str] = Field(default_factory=dict)


class HttpResponse(BaseModel):
    """The response a task got: any status code, with its headers and body."""

    model_config = _BINARY_AS_BASE64 | _NO_INPUT_IN_ERRORS

    status_code: int = Field(ge=100, le=999)
    headers: list[Header] = Field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A Set-Cookie of the target's stays out of logs and tracebacks too.
        for name, value in super().__repr_args__():
            yield name, redact_headers(value) if name == "headers" else value


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

    model_config = _NO_INPUT_IN_ERRORS

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

    model_config = _NO_INPUT_IN_ERRORS

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    reply_topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    deadline: AwareDatetime
    task: Task

    @field_validator("reply_topic")
    @classmethod
    def _reply_topic_is_legal(cls, topic: str) -> str:
        if topic in _RESERVED_TOPIC_NAMES:
            raise ValueError(f"{topic!r} is not a legal Kafka topic name")
        return topic

    @property
    def task_id(self) -> uuid.UUID:
        return self.task.id


class ResultEnvelope(BaseModel):
    """A task's result on its batch's reply topic."""

    model_config = _NO_INPUT_IN_ERRORS

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
