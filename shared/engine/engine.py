"""The engine: runs one task to exactly one result.

One deadline covers every attempt. Before the first attempt the engine checks the allowlist,
which may resolve the host name (see ``shared.engine.allowlist``); before each attempt it checks
the deadline, then sends through the transport built for the task's transport policy. The retry
decision and the delay come from ``shared.engine.retry``; a retry goes only while at least
``MIN_RETRY_WINDOW`` of the deadline is left. Exception text goes to the log; a
result carries only a code and that code's fixed message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from shared.engine.allowlist import TargetAllowlist
from shared.engine.hosts import HostRegistry
from shared.engine.retry import backoff_delay, parse_retry_after, should_retry
from shared.engine.transport import TlsConfig, Transport, TransportFactory
from shared.errors import ErrorCode, InternalError, TaskFailed
from shared.histogram import HistogramChild
from shared.metrics import HTTP_REQUEST_DURATION, HTTP_RETRIES, status_class
from shared.models import (
    ClientPolicy,
    HostPolicy,
    HttpRequest,
    HttpResponse,
    Task,
    TaskResult,
    TransportPolicy,
    error_result,
    response_result,
)

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "Engine", "transport_factory"]

log = logging.getLogger(__name__)

#: Largest response body a task may return. In a result message the body is base64 (4/3 of its
#: size): 700,000 bytes become 933,336, which leaves room for headers and the envelope under
#: Kafka's default 1,000,000-byte message limit.
DEFAULT_MAX_RESPONSE_BYTES = 700_000
#: The transport used when none is named: the fastest one that meets every semantic, by measurement.
DEFAULT_TRANSPORT = "pyreqwest"
#: Seconds of its task's time a retry must have left once it may go, or it isn't sent: a request the
#: deadline cuts before it can be answered loads a fragile host for nothing.
MIN_RETRY_WINDOW = 0.1


def transport_factory(name: str) -> TransportFactory:
    """The factory of the transport called ``name`` (``pyreqwest`` or ``httpx``)."""
    if name == "pyreqwest":
        from shared.engine.pyreqwest_transport import PyreqwestTransport

        return PyreqwestTransport
    if name == "httpx":
        from shared.engine.httpx_transport import HttpxTransport

        return HttpxTransport
    raise ValueError(f"unknown transport {name!r}: choose pyreqwest or httpx")


@functools.cache
def _duration_histogram(method: str, status: int | None) -> HistogramChild:
    # The labelled child never changes, so it is looked up once per method and status code.
    return HTTP_REQUEST_DURATION.labels(method, status_class(status))


@functools.lru_cache(maxsize=256)
def _host_policy(host: HostPolicy, connections_per_host: int | None) -> HostPolicy:
    """``host`` with the pool's ``max_connections_per_host`` folded into its cap: the lower one applies."""
    cap = host.max_concurrent_per_host
    if (connections_per_host is None) or ((cap is not None) and (cap <= connections_per_host)):
        return host
    return host.model_copy(update={"max_concurrent_per_host": connections_per_host})


def _default_user_agent(headers: list[tuple[str, str]], service_name: str) -> str | None:
    """The User-Agent the transport adds: the service name, unless the request's ``headers`` set their own."""
    for name, _ in headers:
        if name.lower() == "user-agent":
            return None
    return service_name


def _failure(exc: Exception, transport: Transport) -> TaskFailed | None:
    """What an exception from an attempt means: ``None`` when the deadline cut it, else an engine error."""
    if isinstance(exc, TimeoutError):
        return None
    if isinstance(exc, TaskFailed):
        log.debug("attempt failed: %s", exc, exc_info=exc.__cause__)
        return exc
    log.error("unexpected error in transport %s", type(transport).__name__, exc_info=exc)
    return InternalError(type(exc).__name__)


def _error(task: Task, code: ErrorCode, attempts: int, started: float, status: int | None = None) -> TaskResult:
    return error_result(task, code, attempts=attempts, elapsed=time.monotonic() - started, status_code=status)


class Engine:
    """Runs tasks over pooled transports, one pool per distinct transport policy."""

    def __init__(
        self,
        *,
        transport: str | TransportFactory = DEFAULT_TRANSPORT,
        tls: TlsConfig | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        allowlist: TargetAllowlist | None = None,
    ) -> None:
        self._factory: TransportFactory = transport_factory(transport) if isinstance(transport, str) else transport
        self._tls = tls or TlsConfig()
        self._max_response_bytes = max_response_bytes
        self._allowlist = allowlist or TargetAllowlist()
        self._transports: dict[tuple[TransportPolicy, TlsConfig], Transport] = {}
        self._last_pool: tuple[ClientPolicy, TlsConfig, Transport, HostPolicy] | None = None
        self._hosts = HostRegistry(clock=time.monotonic)

    def set_tls(self, tls: TlsConfig) -> None:
        """Use ``tls`` for tasks started from now on; pools already open keep theirs until ``aclose``."""
        self._tls = tls

    async def run(self, task: Task, *, deadline: float | None = None) -> TaskResult:
        """Run ``task`` until it has one outcome. ``deadline`` is on ``time.monotonic()``'s clock.

        A task whose ``deadline`` passed before it started ends ``expired`` without being sent.
        The task's own ``timeout`` always applies too, so a later ``deadline`` can't stretch it.
        Cancelling the caller's asyncio task cancels the attempt in flight.
        """
        started = time.monotonic()
        if (deadline is not None) and started >= deadline:
            return _error(task, ErrorCode.EXPIRED, 0, started)
        # pydantic's BaseModel defines __getattr__, which sends every attribute read of a model down the
        # interpreter's slow path (about 40 ns, against 7 for a plain object): the fields read on every task
        # come from the instance dicts, where pydantic keeps them.
        fields = task.__dict__
        own_deadline = started + fields["timeout"]
        if (deadline is None) or (own_deadline < deadline):
            deadline = own_deadline
        request: HttpRequest = fields["request"]
        # The host as the task's URL names it, not the address the allowlist may put in its place.
        url: str = request.__dict__["url"]
        if self._allowlist.enabled:
            try:
                # Resolving a host name counts against the deadline like any attempt.
                async with asyncio.timeout(deadline - time.monotonic()):
                    request = await self._allowlist.target(request)
            except TaskFailed as exc:
                return _error(task, exc.code, 0, started)
            except TimeoutError:
                return _error(task, ErrorCode.TIMEOUT, 0, started)
        request_fields = request.__dict__
        method: str = request_fields["method"]
        headers: list[tuple[str, str]] = request_fields["headers"]
        service_name: str = fields["service_name"]
        # Most requests set no headers at all, and then no User-Agent either.
        user_agent = _default_user_agent(headers, service_name) if headers else service_name
        # Most tasks carry the very same policy object (the shared default, or one template's), so
        # try the last one's pool before hashing the policy model, which pydantic does in Python.
        policy: ClientPolicy = fields["policy"]
        last_pool = self._last_pool
        if (last_pool is not None) and (last_pool[0] is policy) and (last_pool[1] is self._tls):
            transport, host_policy = last_pool[2], last_pool[3]
        else:
            transport, host_policy = self._pool(policy)
        host = self._hosts.host(url, host_policy)
        last: HttpResponse | TaskFailed | None = None
        attempt = 0
        now = time.monotonic() if self._allowlist.enabled else started
        while True:
            if now >= deadline:
                return _error(task, ErrorCode.TIMEOUT, attempt, started)
            if host.enter_at_once(now):
                sent = now
            else:
                # A retry that can't go while it still has its window left isn't sent at all.
                window = MIN_RETRY_WINDOW if attempt else 0.0
                refused = await host.enter(deadline - window, sent_before=attempt > 0)
                if refused is not None:
                    # circuit_open means never sent: a retry the breaker stops ends with what its last attempt got.
                    if (refused is ErrorCode.CIRCUIT_OPEN) and (last is not None):
                        return self._final(task, last, attempt, started)
                    return _error(task, refused, attempt, started)
                sent = time.monotonic()
            attempt += 1
            # The attempt is awaited right here, not in a coroutine of its own: at 16,000 requests in
            # flight every object a request holds is promoted to the old GC generation, and each one
            # brings the next full collection nearer.
            outcome: HttpResponse | TaskFailed | None
            try:
                if transport.enforces_timeout:
                    # No asyncio timer is armed then: one costs several microseconds per attempt on uvloop.
                    outcome = await transport.send(
                        request,
                        user_agent=user_agent,
                        max_body_bytes=self._max_response_bytes,
                        timeout=deadline - sent,
                    )
                else:
                    outcome = await self._send_timed(transport, request, user_agent, deadline)
            except Exception as exc:
                outcome = _failure(exc, transport)
            except BaseException:
                host.abandon(sent)
                _duration_histogram(method, None).observe(time.monotonic() - sent)
                raise
            now = time.monotonic()
            if isinstance(outcome, HttpResponse):
                status = outcome.status_code
                _duration_histogram(method, status).observe(now - sent)
                if status < 429:
                    # No status below 429 is ever retried, nor holds its host: the common answer skips both.
                    host.answered(sent, now)
                    return response_result(fields["id"], outcome, attempt, now - started, fields["labels"])
            else:
                _duration_histogram(method, None).observe(now - sent)
            retry = policy.retry
            host.leave(outcome, sent, now, honor_retry_after=retry.honor_retry_after)
            if outcome is None:
                return _error(task, ErrorCode.TIMEOUT, attempt, started)
            verdict = outcome.status_code if isinstance(outcome, HttpResponse) else outcome
            last = outcome
            if should_retry(attempt, verdict, retry):
                retry_after = None
                if isinstance(outcome, HttpResponse):
                    retry_after = parse_retry_after(outcome.header("retry-after"))
                delay = backoff_delay(attempt, retry, retry_after=retry_after)
                if now + delay + MIN_RETRY_WINDOW < deadline:
                    await asyncio.sleep(delay)
                    now = time.monotonic()
                    if now + MIN_RETRY_WINDOW < deadline:
                        HTTP_RETRIES.inc()
                        continue
            return self._final(task, outcome, attempt, started)

    def _final(self, task: Task, outcome: HttpResponse | TaskFailed, attempts: int, started: float) -> TaskResult:
        elapsed = time.monotonic() - started
        if isinstance(outcome, TaskFailed):
            return _error(task, outcome.code, attempts, started)
        if attempts > 1 and should_retry(0, outcome.status_code, task.policy.retry):
            return _error(task, ErrorCode.RETRIES_EXHAUSTED, attempts, started, outcome.status_code)
        return response_result(task.id, outcome, attempts, elapsed, task.labels)

    async def _send_timed(
        self, transport: Transport, request: HttpRequest, user_agent: str | None, deadline: float
    ) -> HttpResponse:
        """One attempt of a transport that doesn't time itself: ``transport.send`` under an asyncio timer."""
        async with asyncio.timeout(deadline - time.monotonic()):
            return await transport.send(
                request,
                user_agent=user_agent,
                max_body_bytes=self._max_response_bytes,
                timeout=deadline - time.monotonic(),
            )

    def _pool(self, policy: ClientPolicy) -> tuple[Transport, HostPolicy]:
        """The transport for ``policy``'s pool, and the host limits it sets."""
        transport = self._transport_for(policy.transport)
        host_policy = _host_policy(policy.host, policy.transport.max_connections_per_host)
        self._last_pool = (policy, self._tls, transport, host_policy)
        return transport, host_policy

    def _transport_for(self, policy: TransportPolicy) -> Transport:
        key = (policy, self._tls)
        transport = self._transports.get(key)
        if transport is None:
            transport = self._transports[key] = self._factory(policy, self._tls)
        return transport

    async def aclose(self) -> None:
        """Close every pool."""
        # By identity: one transport instance may serve every pool (a caller's own, such as a MockTransport).
        transports = list({id(t): t for t in self._transports.values()}.values())
        self._transports = {}
        self._last_pool = None
        await asyncio.gather(*(t.aclose() for t in transports), return_exceptions=True)
