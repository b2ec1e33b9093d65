"""The TRS contract: tasks, policies, results and the Kafka envelopes, as pydantic v2 models.

This module is the single source of truth for every field. The wire format is the JSON of
these models, bytes as standard base64 (RFC 4648 section 4, what ``base64 -d`` reads); there is
no second, hand-written schema.

What comes in (tasks, task files, envelopes) is validated by pydantic. Results are built on the
hot path, once per task, so ``TaskResult``, ``HttpResponse`` and ``TaskError`` are frozen, slotted
dataclasses instead: built directly by the engine and the transports, and validated and encoded by
pydantic only where they cross the wire or a file (``TaskResult.to_json``/``from_json``).

Durations are seconds (floats). Header lists keep order and allow a name to repeat.
"""

from __future__ import annotations

import binascii
import copy
import functools
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, NoReturn, Self, TypeGuard

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import CoreConfig, PydanticCustomError, SchemaValidator

from shared.errors import ERROR_MESSAGES, ErrorCode
from shared.redaction import redact, redact_headers, redact_url

__all__ = [
    "DEFAULT_TCP_USER_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "EMPTY_LABELS",
    "MAX_HEADER_LENGTH",
    "MAX_LABELS",
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MAX_REQUEST_HEADERS",
    "SCHEMA_VERSION",
    "BreakerPolicy",
    "CancelEnvelope",
    "ClientPolicy",
    "HostPolicy",
    "HttpRequest",
    "HttpResponse",
    "Labels",
    "RampPolicy",
    "ReleaseNotice",
    "ResultEnvelope",
    "RetryPolicy",
    "ServiceName",
    "Task",
    "TaskEnvelope",
    "TaskError",
    "TaskResult",
    "TopicName",
    "TransportPolicy",
    "error_result",
    "is_topic_name",
    "normalize_service_name",
    "response_result",
]

#: The envelope schema this code reads and writes.
SCHEMA_VERSION: Final[Literal[1]] = 1
#: Seconds one task may take, across every attempt, when the caller sets nothing.
DEFAULT_TIMEOUT = 30.0
#: Seconds a request's bytes may go unacknowledged before the attempt's connection is dropped and
#: the attempt retried (see ``TransportPolicy``; measured in benchmarks/weak_server.py).
DEFAULT_TCP_USER_TIMEOUT = 2.0
#: Longest accepted service name; keeps every derived topic name under Kafka's 249 characters.
MAX_SERVICE_NAME_LENGTH = 100

#: Most headers a request may carry (Apache's default limit of request fields).
MAX_REQUEST_HEADERS = 100
#: Longest header accepted, name and value together, in characters (about what servers allow per header line).
MAX_HEADER_LENGTH = 8192
#: Most labels a task may carry, and the longest key and value, in characters. A task's labels ride in its
#: task message and again in its result message, so they are bounded like headers.
MAX_LABELS = 64
MAX_LABEL_KEY_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 1024

# Each pattern is matched with ``\Z``: ``$`` would also match before a trailing newline.
_SERVICE_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_METHOD_RE = re.compile(r"[A-Z]{1,20}\Z")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: A header value holds no control character but tab (RFC 9110), and no lone surrogate, which no
#: transport can encode.
_HEADER_VALUE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]*\Z")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
#: An http(s) URL with a host, no user info, and no white space or control character.
_PLAIN_HTTP_URL_RE = re.compile(
    r"(?i:https?)://[^\s\x00-\x1f\x7f/?#:@][^\s\x00-\x1f\x7f/?#@]*(?:[/?#][^\s\x00-\x1f\x7f]*)?\Z"
)
_URL_BAD_CHAR_RE = re.compile(r"[\s\x00-\x1f\x7f]")
_URL_AUTHORITY_END_RE = re.compile(r"[/?#]")
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}(?=:)")
#: Kafka refuses these two topic names, though each matches the allowed characters.
_RESERVED_TOPIC_NAMES = frozenset({".", ".."})

#: Bytes in JSON are base64. pydantic reads both alphabets (standard and URL-safe) but writes only the URL-safe
#: one, which ``base64 -d`` refuses, so ``Body`` writes the standard alphabet itself.
_BINARY_AS_BASE64 = ConfigDict(val_json_bytes="base64")
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


def _legal_topic(topic: str) -> str:
    if topic in _RESERVED_TOPIC_NAMES:
        raise ValueError(f"{topic!r} is not a legal Kafka topic name")
    return topic


#: A name Kafka accepts for a topic.
TopicName = Annotated[
    str, Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$"), AfterValidator(_legal_topic)
]
_TOPIC_NAME: Final = TypeAdapter(TopicName)


def is_topic_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a ``TopicName``: the check a task envelope's reply topic passes."""
    try:
        _TOPIC_NAME.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


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


def _standard_base64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


#: A body: raw bytes in Python, standard base64 (with padding) in JSON.
Body = Annotated[bytes, PlainSerializer(_standard_base64, return_type=str, when_used="json")]


class Labels(dict[str, str]):
    """A task's labels, read-only: its result carries the very same mapping back, so neither can change it.

    It is hashable and copies as itself, so the one ``EMPTY_LABELS`` serves every task that sets none.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("labels are read-only: assign a new mapping instead, as in task.labels = {...}")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        return self

    def __reduce__(self) -> tuple[type[Labels], tuple[dict[str, str]]]:
        return type(self), (dict(self),)


#: The labels of every task that sets none: one shared mapping, so they cost nothing per task.
EMPTY_LABELS: Final = Labels()


def _checked_labels(labels: Mapping[str, str]) -> Labels:
    """``labels`` within their bounds, as read-only ``Labels``; raises ``ValueError`` naming the first problem."""
    if not labels:
        return EMPTY_LABELS
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels, over the limit of {MAX_LABELS}")
    for key, value in labels.items():
        if not 0 < len(key) <= MAX_LABEL_KEY_LENGTH:
            raise ValueError(f"label key {_shown(key)} must be 1 to {MAX_LABEL_KEY_LENGTH} characters long")
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise ValueError(f"label {_shown(key)} has a value over {MAX_LABEL_VALUE_LENGTH} characters")
        # JSON can't carry a lone surrogate, and a task's labels go into its messages.
        if not (key.isascii() and value.isascii()) and (_SURROGATE_RE.search(key) or _SURROGATE_RE.search(value)):
            raise ValueError(f"label {_shown(key)} holds a lone surrogate")
    return labels if isinstance(labels, Labels) else Labels(labels)


#: Free-form string labels, checked and made read-only.
LabelsField = Annotated[Mapping[str, str], AfterValidator(_checked_labels)]


class _HeaderLookup:
    """``header(name)`` over a ``headers`` sequence of pairs, for requests and responses alike."""

    __slots__ = ()
    headers: Sequence[Header]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)


class HttpRequest(_HeaderLookup, BaseModel):
    """One HTTP request. ``headers`` is an ordered list of pairs; a name may repeat."""

    model_config = _BINARY_AS_BASE64 | _NO_INPUT_IN_ERRORS | _NO_UNKNOWN_KEYS | ConfigDict(frozen=False)

    method: str = "GET"
    url: str
    headers: list[RequestHeader] = Field(default_factory=list, max_length=MAX_REQUEST_HEADERS)
    body: Body = b""

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

    ``None`` means "the transport's default". ``tcp_user_timeout`` (Linux's ``TCP_USER_TIMEOUT``)
    is how long a request's bytes may go unacknowledged by the target's kernel before the
    connection is dropped and the attempt retried: a weak server whose listen backlog overflowed
    leaves connections that look open but never take the request. A slow server is not cut by
    it, since its kernel acknowledges the request while the server works.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_connections: int | None = Field(default=None, ge=1, le=100_000)
    #: Not a cap on connections. The engine counts it as a cap on requests in flight to one host
    #: (host and port), on every transport, as it does ``HostPolicy.max_concurrent_per_host``: the
    #: lower of the two applies. On pyreqwest it is also the most idle connections the pool keeps
    #: per host (reqwest has no per-host connection cap); httpx has no per-host pool setting, so
    #: there the engine's cap is all it is.
    max_connections_per_host: int | None = Field(default=None, ge=1, le=100_000)
    idle_timeout: float | None = Field(default=90.0, gt=0)
    response_header_timeout: float | None = Field(default=None, gt=0)
    tls_handshake_timeout: float | None = Field(default=10.0, gt=0)
    tcp_user_timeout: float | None = Field(default=DEFAULT_TCP_USER_TIMEOUT, gt=0, le=3600)
    keep_alive: bool = True


class BreakerPolicy(BaseModel):
    """A host's circuit breaker: when it opens, and how long it stays open.

    ``failures`` connection errors or timeouts in a row to one host, the first of them no more than
    ``window`` seconds before the last, open it. For ``cooldown`` seconds its tasks then end
    ``circuit_open``, unsent; after that one probe goes through, and its outcome closes the breaker
    or opens it again. The defaults suit a fleet of BMCs: one that is rebooting refuses or times
    out for a minute or more, and five failures in a row rule out a lost packet.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: int = Field(default=5, ge=1, le=1000)
    window: float = Field(default=60.0, gt=0, le=3600)
    cooldown: float = Field(default=30.0, gt=0, le=3600)


class RampPolicy(BaseModel):
    """How the engine raises the requests in flight to one host past what the host has shown it takes.

    A burst of connections all at once is what overflows a weak server: ``python3 -m http.server``
    keeps 5 handshakes in its listen backlog and takes each connection on a thread of its own, so
    200 at once leave most of them dropped, each costing a retransmission of a second or more. So a
    host starts at ``initial`` requests in flight, and while tasks wait past that level it rises by
    ``per_second`` a second; until the host first answers, that pace doubles every 100 ms (a host
    that takes seconds per answer still gets a burst of thousands within a second). The pace is
    counted in the engine's 10 ms steps, so a client loop too busy to take them on time ramps
    slower. Each answer also raises it by one, as TCP's slow start does, while the answers account
    for what is in flight (by Little's law, answer time over time between answers): a host that
    strands requests, as an overflowed backlog does, gets only the pace. A host idle for 60 s
    starts again.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial: int = Field(default=8, ge=1, le=100_000)
    per_second: float = Field(default=500.0, gt=0, le=1_000_000)


class HostPolicy(BaseModel):
    """Limits per target host (host and port, as the URL names them), kept by the engine.

    ``max_concurrent_per_host`` caps the requests in flight to one host; ``None`` sets no cap.
    ``rate_per_host`` is a token bucket in requests per second, with room for ``rate_burst`` at
    once (the whole second's worth when unset); every attempt, retries too, takes a token.
    ``breaker`` is on unless set to ``None``, and so is ``ramp``, the gentle start of a burst.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrent_per_host: int | None = Field(default=None, ge=1, le=100_000)
    rate_per_host: float | None = Field(default=None, gt=0, le=100_000)
    rate_burst: int | None = Field(default=None, ge=1, le=100_000)
    breaker: BreakerPolicy | None = BreakerPolicy()
    ramp: RampPolicy | None = RampPolicy()

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> Self:
        if (self.rate_burst is not None) and (self.rate_per_host is None):
            raise ValueError("rate_burst needs rate_per_host")
        return self

    @property
    def burst(self) -> int:
        """Requests a full bucket lets through at once."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, int(self.rate_per_host or 1))


class ClientPolicy(BaseModel):
    """Retry, transport and per-host policy; Go TRS's ``ClientPolicy`` plus the host limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The policies are frozen, so every default can be the one shared instance: a task that sets no
    # policy then costs no policy models of its own (there are often 100,000 tasks in memory).
    retry: RetryPolicy = RetryPolicy()
    transport: TransportPolicy = TransportPolicy()
    host: HostPolicy = HostPolicy()


class _PolicyInterner:
    """Equal policies, as validated from dicts (decoded task messages, task files), become one object.

    A worker decodes every task with its policy, and the engine picks a task's connection pool by
    its transport policy: one shared object is found by identity there, where a fresh one would be
    hashed and compared field by field. A dict equal to one seen before is not validated again: the
    policy fields are numbers, booleans and ``None``, and pydantic validates values Python finds
    equal (``1``, ``1.0``, ``true``) to the same policy. Only the latest ``MAX_POLICIES`` dicts are
    remembered, so hostile input costs a validation per task, as without the table, and no memory.
    """

    MAX_POLICIES = 16

    def __init__(self, default: ClientPolicy) -> None:
        #: Never evicted: the policy of every task that sets none, or sets it to the defaults.
        self._default = (default.model_dump(), default)
        # Newest first; a tuple replaced whole, so threads validating tasks at once never see it change.
        self._entries: tuple[tuple[dict[str, Any], ClientPolicy], ...] = ()

    def intern(self, raw: dict[str, Any], validate: Callable[[Any], ClientPolicy]) -> ClientPolicy:
        known = self._find(raw)
        if known is not None:
            return known
        policy = validate(raw)
        # Each policy is kept under its full dump too, so a dict that sets fewer fields finds it.
        canonical = policy.model_dump()
        known = self._find(canonical)
        if known is None:
            known = policy
            self._entries = ((canonical, known), *self._entries)
        # The caller's dict may change later: the table keeps a copy of it.
        self._entries = ((copy.deepcopy(raw), known), *self._entries)[: self.MAX_POLICIES]
        return known

    def _find(self, raw: dict[str, Any]) -> ClientPolicy | None:
        if raw == self._default[0]:
            return self._default[1]
        for seen, policy in self._entries:
            if seen == raw:
                return policy
        return None


#: Every task that sets no policy shares this one.
DEFAULT_POLICY = ClientPolicy()
_policies = _PolicyInterner(DEFAULT_POLICY)


class Task(BaseModel):
    """One unit of work: an HTTP request with its timeout and policy.

    ``timeout`` is the one deadline, in seconds, that covers every attempt. An ``ignore``d
    task is never sent and yields no result. ``labels`` are the caller's own strings, handed back
    unchanged in the task's result (at most ``MAX_LABELS``, keys up to ``MAX_LABEL_KEY_LENGTH`` and
    values up to ``MAX_LABEL_VALUE_LENGTH`` characters); they are read-only once set.
    """

    model_config = _NO_INPUT_IN_ERRORS | _NO_UNKNOWN_KEYS | ConfigDict(validate_assignment=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    service_name: ServiceName
    request: HttpRequest
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=86_400)
    policy: ClientPolicy = DEFAULT_POLICY
    ignore: bool = False
    labels: LabelsField = EMPTY_LABELS

    @field_validator("policy", mode="wrap")
    @classmethod
    def _one_object_per_policy(cls, value: Any, validate: ValidatorFunctionWrapHandler) -> ClientPolicy:
        if isinstance(value, dict):
            return _policies.intern(value, validate)
        policy: ClientPolicy = validate(value)
        return policy


#: For every result class: what pydantic needs to read them from JSON (bodies as base64), with no input in errors.
_RESULT_CONFIG = _BINARY_AS_BASE64 | _NO_INPUT_IN_ERRORS


# The two classes built once per task write their fields through the slots' own descriptors: a frozen
# dataclass's generated __init__ looks up and calls object.__setattr__ per field, which made building a
# result 1.6 times as slow. pydantic, which reads results from JSON, fills the slots itself and then calls
# __post_init__, so each check is written once, in __post_init__'s terms, and called from __init__ too.


@dataclass(frozen=True, slots=True, repr=False, init=False)
class HttpResponse(_HeaderLookup):
    """The response a task got: any status code, with its headers (pairs, in order) and body."""

    __pydantic_config__: ClassVar[ConfigDict] = _RESULT_CONFIG

    status_code: Annotated[int, Field(ge=100, le=999)]
    headers: tuple[Header, ...] = ()
    body: Body = b""

    def __init__(self, status_code: int, headers: tuple[Header, ...] = (), body: bytes = b"") -> None:
        _set_status_code(self, status_code)
        _set_response_headers(self, headers)
        _set_body(self, body)

    def __repr__(self) -> str:
        # A Set-Cookie of the target's stays out of logs and tracebacks.
        headers = redact_headers(self.headers)
        return f"HttpResponse(status_code={self.status_code!r}, headers={headers!r}, body={self.body!r})"


@dataclass(frozen=True, slots=True)
class TaskError:
    """A typed error outcome: a stable ``code`` and a fixed, human-readable ``message``."""

    __pydantic_config__: ClassVar[ConfigDict] = _RESULT_CONFIG

    code: ErrorCode
    message: str
    #: The last status code seen, when retries ran out on a retryable status.
    status_code: Annotated[int | None, Field(ge=100, le=999)] = None

    @classmethod
    def of(cls, code: ErrorCode, status_code: int | None = None) -> TaskError:
        """The error for ``code`` with its fixed message; without a status code, one shared instance per code."""
        if status_code is None:
            return _ERRORS[code]
        return cls(code, ERROR_MESSAGES[code], status_code)


_ERRORS: Final = {code: TaskError(code, ERROR_MESSAGES[code]) for code in ErrorCode}


class _ResultSlots:
    """``TaskResult``'s slots, declared on a base of their own so that ``_ResultBuilder`` has the very same layout."""

    __slots__ = ("attempts", "elapsed", "error", "labels", "response", "task_id")
    task_id: uuid.UUID
    response: HttpResponse | None
    error: TaskError | None
    attempts: int
    elapsed: float
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True, init=False)
class TaskResult(_ResultSlots):
    """Exactly one outcome of a task: a ``response`` or an ``error``, never both; and the task's labels.

    ``attempts`` counts the requests sent, ``elapsed`` the seconds from the task's start to its outcome.
    """

    __pydantic_config__: ClassVar[ConfigDict] = _RESULT_CONFIG

    task_id: uuid.UUID
    response: HttpResponse | None = None
    error: TaskError | None = None
    attempts: Annotated[int, Field(ge=0)] = 0
    elapsed: Annotated[float, Field(ge=0)] = 0.0
    labels: LabelsField = EMPTY_LABELS

    def __init__(
        self,
        task_id: uuid.UUID,
        response: HttpResponse | None = None,
        error: TaskError | None = None,
        attempts: int = 0,
        elapsed: float = 0.0,
        labels: Mapping[str, str] = EMPTY_LABELS,
    ) -> None:
        if (response is None) == (error is None):
            raise ValueError(_ONE_OUTCOME)
        _set_task_id(self, task_id)
        _set_response(self, response)
        _set_error(self, error)
        _set_attempts(self, attempts)
        _set_elapsed(self, elapsed)
        _set_labels(self, labels)

    def __post_init__(self) -> None:
        if (self.response is None) == (self.error is None):
            raise ValueError(_ONE_OUTCOME)

    @property
    def ok(self) -> bool:
        """True when the task got a response (of any status code)."""
        return self.response is not None

    @property
    def outcome(self) -> str:
        """``"response"`` or the error code; the label metrics and summaries use."""
        return "response" if self.error is None else self.error.code.value

    def to_json(self) -> bytes:
        """This result as JSON: the form ``trs run`` writes and the wire carries."""
        return _RESULT_ADAPTER.dump_json(self)

    @classmethod
    def from_json(cls, data: str | bytes) -> TaskResult:
        """A result read back from ``to_json``'s JSON; raises ``pydantic.ValidationError`` when it isn't one."""
        result: TaskResult = _RESULT_VALIDATOR.validate_json(data)
        return result


_ONE_OUTCOME = "a result has exactly one of response or error"
_SlotSetter = Callable[[Any, Any], None]


def _slot_setters(cls: type, *names: str) -> tuple[_SlotSetter, ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_set_status_code, _set_response_headers, _set_body = _slot_setters(HttpResponse, "status_code", "headers", "body")
_set_task_id, _set_response, _set_error, _set_attempts, _set_elapsed, _set_labels = _slot_setters(
    _ResultSlots, "task_id", "response", "error", "attempts", "elapsed", "labels"
)


class _ResultBuilder(_ResultSlots):
    """A ``TaskResult`` while its fields are written: plain slot stores, with no frozen ``__setattr__`` in the way.

    Once they are written the instance becomes a ``TaskResult`` by ``__class__`` assignment, which Python allows
    between classes of one layout. The engine builds a result per task, and this way takes 150 ns where
    ``TaskResult(...)``, a descriptor call per slot, takes 340 ns (measured with ``benchmarks/engine_overhead.py``).
    """

    __slots__ = ()


def _new_result(
    task_id: uuid.UUID,
    response: HttpResponse | None,
    error: TaskError | None,
    attempts: int,
    elapsed: float,
    labels: Mapping[str, str],
) -> TaskResult:
    """A ``TaskResult`` of exactly one outcome, which its callers guarantee, so unchecked."""
    result = _ResultBuilder()
    result.task_id = task_id
    result.response = response
    result.error = error
    result.attempts = attempts
    result.elapsed = elapsed
    result.labels = labels
    result.__class__ = TaskResult  # type: ignore[assignment]
    return result  # type: ignore[return-value]


_RESULT_ADAPTER: Final = TypeAdapter(TaskResult)
# A TypeAdapter applies ``hide_input_in_errors`` only to models, not to a dataclass at its top, so reading
# gets a validator of its own: an error must not echo a result's headers.
_RESULT_VALIDATOR: Final = SchemaValidator(
    _RESULT_ADAPTER.core_schema, CoreConfig(hide_input_in_errors=True, val_json_bytes="base64")
)


def error_result(
    task: Task, code: ErrorCode, *, attempts: int = 0, elapsed: float = 0.0, status_code: int | None = None
) -> TaskResult:
    """``task``'s result when it ends with error ``code``: it carries the task's id and labels."""
    return _new_result(task.id, None, TaskError.of(code, status_code), attempts, elapsed, task.labels)


def response_result(
    task_id: uuid.UUID, response: HttpResponse, attempts: int, elapsed: float, labels: Mapping[str, str]
) -> TaskResult:
    """The result of task ``task_id`` (with its ``labels``) when it ends with ``response``.

    It takes the task's fields rather than the task, whose attribute reads cost the engine more than the
    rest of building its result (``shared.engine.engine`` says why).
    """
    return _new_result(task_id, response, None, attempts, elapsed, labels)


def utc_now() -> datetime:
    return datetime.now(UTC)


class TaskEnvelope(BaseModel):
    """A task on the request topic, with what the worker needs to answer it."""

    model_config = _NO_INPUT_IN_ERRORS

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    reply_topic: TopicName
    deadline: AwareDatetime
    task: Task

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
