"""Per-host limits: a cap and a ramp on requests in flight, a token-bucket rate, a Retry-After hold and a breaker.

A host is the host and port a URL names, lower-cased, with the scheme's default port when none is
written, so ``http://bmc-1`` and ``http://BMC-1:80`` are one host. Before each attempt the engine
calls ``Host.enter``, which waits its turn in this order: a slot under the host's limit, the end
of a hold that a ``Retry-After`` put on the host, a token of the bucket. The limit is the lower of
the cap and the ramp's level (see ``RampPolicy``): a host starts at a few requests in flight, and
the level rises while tasks wait past it, as long as the host's answers account for what is in
flight. Every wait counts against the task's deadline. After the attempt the engine calls
``Host.leave`` with its outcome, which frees the slot, feeds the ramp and feeds the breaker.

Tasks whose policies differ share one entry per host: the policy of the task that finds the host
idle (nothing in flight or waiting) sets its cap and rate until it is idle again, so a host never
sees the sum of two policies' caps. The breaker's counts survive a policy change.

The registry stays bounded: once it holds more than ``max_hosts`` entries it drops those with
nothing to remember (idle, breaker closed with no recent failure, bucket full, no hold), so a
worker that meets 100,000 distinct hosts doesn't keep them all.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import time
from collections.abc import Callable
from enum import Enum

from prometheus_client import Counter

from shared.engine.retry import parse_retry_after
from shared.errors import ConnectFailed, ErrorCode, TaskFailed, TaskTimeout
from shared.models import BreakerPolicy, HostPolicy, HttpResponse, RampPolicy

__all__ = ["DEFAULT_MAX_HOSTS", "BreakerState", "CircuitBreaker", "Host", "HostRegistry", "TokenBucket", "host_key"]

log = logging.getLogger(__name__)

#: Entries kept before idle ones are dropped; a few hundred bytes each.
DEFAULT_MAX_HOSTS = 10_000

HOST_BREAKER_TRANSITIONS = Counter(
    "trs_host_breaker_transitions_total", "Per-host circuit breaker state changes, by the state entered.", ["state"]
)
HOST_TASKS_DELAYED = Counter(
    "trs_host_attempts_delayed_total",
    "Attempts that waited for their host: for a slot under the cap or the ramp, a Retry-After hold or a rate token.",
    ["reason"],
)
_DELAYED_BY_CAP = HOST_TASKS_DELAYED.labels("cap")
_DELAYED_BY_HOLD = HOST_TASKS_DELAYED.labels("retry_after")
_DELAYED_BY_RATE = HOST_TASKS_DELAYED.labels("rate")
_DELAYED_BY_RAMP = HOST_TASKS_DELAYED.labels("ramp")

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_AUTHORITY_RE = re.compile(r"([A-Za-z]+)://([^/?#]*)")
#: The ramp (see ``RampPolicy``): seconds between the steps of its timer,
RAMP_TICK = 0.01
#: how many steps the timer's pace doubles after, while the host hasn't answered yet,
RAMP_DOUBLE_EVERY = 10
#: how many times the requests in flight that its answers account for a host may hold and still grow,
RAMP_HEADROOM = 1.0
#: the weight of each answer in the averages of answer time and of time between answers,
RAMP_WEIGHT = 1 / 8
#: and how long a host stays idle before it starts again from ``RampPolicy.initial``.
RAMP_IDLE_RESET = 60.0
#: Statuses whose ``Retry-After`` speaks for the whole host, not one request.
_HOST_WIDE_RETRY_AFTER = frozenset({429, 503})


def host_key(url: str) -> str:
    """``host:port`` of ``url``, lower-cased, with the scheme's default port when none is written."""
    match = _AUTHORITY_RE.match(url)
    if match is None:
        return url.lower()
    scheme, authority = match.groups()
    authority = authority.rpartition("@")[2].lower()
    # An IPv6 literal holds colons of its own: a port follows only its closing bracket.
    if authority.rpartition("]")[2].find(":") >= 0:
        return authority
    return f"{authority}:{_DEFAULT_PORTS.get(scheme.lower(), '')}"


class TokenBucket:
    """A token bucket kept as the time its next token is due (GCRA), so waiters get their turns in order.

    ``reserve`` takes a token and says when it may be used: at once while the bucket holds tokens,
    else one interval after the token before it.
    """

    __slots__ = ("_due", "_interval", "_tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._due = 0.0

    def available_at(self, now: float) -> float:
        """The earliest time a token reserved ``now`` could be used."""
        return max(now, self._due - self._tolerance)

    def reserve(self, now: float) -> float:
        """Take the next token and return when it may be used (never before ``now``)."""
        at = self.available_at(now)
        self._due = max(self._due, now) + self._interval
        return at

    def full(self, now: float) -> bool:
        return self._due <= now


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Module constants: reading a member off an Enum class goes through a descriptor, a third of a
# microsecond each time, and the breaker's state is checked on every attempt.
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class CircuitBreaker:
    """Opens after ``failures`` connection errors or timeouts in a row within ``window`` seconds.

    While open, nothing is let through. Once ``cooldown`` has passed, the next attempt is let
    through as the probe (half-open) and every other is refused until the probe's outcome is
    known: a response closes the breaker, a failure opens it again. Outcomes of attempts sent
    before the breaker went half-open don't decide anything then.

    Only failures of attempts sent since the host last answered count: an attempt sent before
    that answer came says nothing new about the host. A burst against a weak server, whose
    overflowed backlog drops a wave of connections at once while it goes on answering others,
    therefore doesn't open it; a host that stops answering opens it after ``failures`` attempts.
    """

    __slots__ = (
        "_failures",
        "_first_failure",
        "_last_answer",
        "_opened_at",
        "_probe_sent",
        "host",
        "policy",
        "state",
    )

    def __init__(self, host: str, policy: BreakerPolicy) -> None:
        self.host = host
        self.policy = policy
        self.state = _CLOSED
        self._failures = 0
        self._first_failure = 0.0
        self._opened_at = 0.0
        self._probe_sent: float | None = None
        self._last_answer = -math.inf

    def refuses(self, now: float) -> bool:
        """Whether an attempt at ``now`` must end ``circuit_open``, without claiming the probe."""
        if self.state is _CLOSED:
            return False
        if self.state is _OPEN:
            return now < self._opened_at + self.policy.cooldown
        return self._probe_sent is not None

    def admit(self, now: float) -> bool:
        """Whether an attempt may be sent at ``now``; the first one after the cool-down becomes the probe."""
        if self.refuses(now):
            return False
        if self.state is _OPEN:
            self._enter(_HALF_OPEN)
        if self.state is _HALF_OPEN:
            self._probe_sent = now
        return True

    def record(self, failed: bool, sent: float, now: float) -> None:
        """The outcome of an attempt sent at ``sent``: ``failed`` when it was a connection error or timeout."""
        if (self.state is _CLOSED) and not failed:
            self._failures = 0
            self._last_answer = now
            return
        if self.state is _HALF_OPEN:
            if (self._probe_sent is None) or (sent < self._probe_sent):
                return
            self._probe_sent = None
            if failed:
                self._open(now)
            else:
                self._last_answer = now
                self._close()
            return
        if (self.state is _OPEN) or (sent < self._last_answer):
            return
        if (self._failures == 0) or (now - self._first_failure > self.policy.window):
            self._failures, self._first_failure = 0, now
        self._failures += 1
        if self._failures >= self.policy.failures:
            log.warning(
                "circuit breaker for host %s opened after %d connection errors or timeouts in a row;"
                " its tasks end circuit_open for %g s",
                self.host,
                self._failures,
                self.policy.cooldown,
            )
            self._open(now)

    def answered(self, sent: float, now: float) -> None:
        """``record`` of an attempt that got a response: the host answered."""
        if self.state is _CLOSED:
            self._failures = 0
            self._last_answer = now
        else:
            self.record(False, sent, now)

    def abandon(self, sent: float) -> None:
        """An attempt sent at ``sent`` was cancelled: if it was the probe, the next attempt may probe."""
        if (self.state is _HALF_OPEN) and (self._probe_sent is not None) and (sent >= self._probe_sent):
            self._probe_sent = None

    def forgettable(self, now: float) -> bool:
        """Whether dropping this breaker loses nothing: closed with no failure in the window."""
        if self.state is not _CLOSED:
            return False
        return (self._failures == 0) or (now - self._first_failure > self.policy.window)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._failures = 0
        self._enter(_OPEN)

    def _close(self) -> None:
        log.info("circuit breaker for host %s closed: the probe got a response", self.host)
        self._failures = 0
        self._enter(_CLOSED)

    def _enter(self, state: BreakerState) -> None:
        self.state = state
        HOST_BREAKER_TRANSITIONS.labels(state.value).inc()


class Host:
    """One host's limits, shared by every task that targets it."""

    __slots__ = (
        "_answer_gap",
        "_answer_seconds",
        "_bucket",
        "_clock",
        "_credit",
        "_last_answer",
        "_pace",
        "_ramp",
        "_ramp_timer",
        "_reset_at",
        "_ticks",
        "_waiters",
        "breaker",
        "cap",
        "held_until",
        "in_use",
        "key",
        "level",
        "limit",
        "policy",
    )

    def __init__(self, key: str, policy: HostPolicy, clock: Callable[[], float]) -> None:
        self.key = key
        self._clock = clock
        self.in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.held_until = 0.0
        self.breaker: CircuitBreaker | None = None
        self.policy = policy
        self.cap: int | None = None
        #: The ramp's level: requests in flight the host has been given so far (see ``RampPolicy``).
        self.level = 0
        #: What ``enter`` waits under: the lower of ``cap`` and ``level``, ``None`` for neither.
        self.limit: int | None = None
        self._ramp: RampPolicy | None = None
        self._ramp_timer: asyncio.TimerHandle | None = None
        #: Averages of the answers that came while tasks waited past the level: how long each took, and
        #: the time between them; the last one's time is ``-inf`` before the first.
        self._answer_seconds = 0.0
        self._answer_gap = 0.0
        self._last_answer = -math.inf
        #: The timer's pace (requests a second), and its steps taken since the host was last idle.
        self._pace = 0.0
        self._ticks = 0
        #: The part of a request the pace has earned but not yet let in.
        self._credit = 0.0
        #: When the ramp starts again from ``initial`` if the host is still idle then.
        self._reset_at = math.inf
        self._bucket: TokenBucket | None = None
        self.configure(policy)

    def configure(self, policy: HostPolicy) -> None:
        """Take ``policy``'s cap, ramp, rate and breaker thresholds; only while the host is idle."""
        self.policy = policy
        self.cap = policy.max_concurrent_per_host
        self._ramp = policy.ramp
        self._restart_ramp()
        if policy.ramp is None:
            self._set_level(0)
        self._bucket = None if policy.rate_per_host is None else TokenBucket(policy.rate_per_host, policy.burst)
        if policy.breaker is None:
            self.breaker = None
        elif self.breaker is None:
            self.breaker = CircuitBreaker(self.key, policy.breaker)
        else:
            self.breaker.policy = policy.breaker

    def _set_level(self, level: int) -> None:
        self.level = level
        cap = self.cap
        if self._ramp is None:
            self.limit = cap
        else:
            self.limit = level if (cap is None) or (level < cap) else cap

    @property
    def idle(self) -> bool:
        return (self.in_use == 0) and not self._waiters

    def forgettable(self, now: float) -> bool:
        """Whether dropping this entry loses nothing the next task would need."""
        if not self.idle or (self.held_until > now):
            return False
        if (self._bucket is not None) and not self._bucket.full(now):
            return False
        return (self.breaker is None) or self.breaker.forgettable(now)

    def enter_at_once(self, now: float) -> bool:
        """Take a slot at ``now`` if nothing would make the attempt wait or be refused; the common case.

        On ``True`` the caller holds a slot, as after ``enter``; on ``False`` it calls ``enter``.
        """
        if (self._bucket is not None) or (self.held_until > now):
            return False
        if (self.in_use == 0) and (now >= self._reset_at):
            self._restart_ramp()
        limit = self.limit
        if (limit is not None) and ((self.in_use >= limit) or self._waiters):
            return False
        breaker = self.breaker
        if (breaker is not None) and (breaker.state is not _CLOSED):
            return False
        self.in_use += 1
        return True

    async def enter(self, deadline: float, *, sent_before: bool) -> ErrorCode | None:
        """Wait for this host's turn; ``None`` when the attempt may go, else the code the task ends with.

        The code is ``circuit_open`` when the breaker refuses, and when the deadline comes first,
        ``expired`` for a task never sent yet (``sent_before`` false) or ``timeout`` for a retry.
        On ``None`` the caller holds a slot and must call ``leave`` (or ``abandon``) once.
        """
        breaker = self.breaker
        if (breaker is not None) and breaker.refuses(self._clock()):
            return ErrorCode.CIRCUIT_OPEN
        late = ErrorCode.TIMEOUT if sent_before else ErrorCode.EXPIRED
        if (self.in_use == 0) and (self._clock() >= self._reset_at):
            self._restart_ramp()
        limit = self.limit
        if (limit is not None) and ((self.in_use >= limit) or self._waiters):
            if (self.cap is not None) and (self.in_use >= self.cap):
                _DELAYED_BY_CAP.inc()
            else:
                _DELAYED_BY_RAMP.inc()
                self._start_ramp_timer()
            if not await self._wait_for_slot(deadline):
                return late
        else:
            self.in_use += 1
        try:
            if not await self._wait_for_hold_and_token(deadline):
                self._release()
                return late
        except BaseException:
            self._release()
            raise
        if (breaker is not None) and not breaker.admit(self._clock()):
            self._release()
            return ErrorCode.CIRCUIT_OPEN
        return None

    def leave(
        self, outcome: HttpResponse | TaskFailed | None, sent: float, now: float, *, honor_retry_after: bool
    ) -> None:
        """The attempt sent at ``sent`` ended at ``now`` with ``outcome`` (``None``: the deadline cut it)."""
        self._free_slot(sent, now, answered=isinstance(outcome, HttpResponse))
        if isinstance(outcome, HttpResponse):
            if honor_retry_after and (outcome.status_code in _HOST_WIDE_RETRY_AFTER):
                self._hold(outcome, now)
            failed = False
        else:
            failed = (outcome is None) or isinstance(outcome, ConnectFailed | TaskTimeout)
        if self.breaker is not None:
            self.breaker.record(failed, sent, now)

    def answered(self, sent: float, now: float) -> None:
        """``leave`` for a response that puts no hold on the host (any but 429 and 503): the common outcome."""
        if self._waiters:
            self._free_slot(sent, now, answered=True)
        else:
            # _free_slot's branch for a host nobody waits for, written out: a call less on every attempt.
            self.in_use -= 1
            if (self.in_use == 0) and (self._ramp is not None):
                self._reset_at = now + RAMP_IDLE_RESET
        breaker = self.breaker
        if breaker is not None:
            if breaker.state is _CLOSED:
                # CircuitBreaker.answered written out for a closed breaker: a call less on every attempt.
                breaker._failures = 0
                breaker._last_answer = now
            else:
                breaker.answered(sent, now)

    def _free_slot(self, sent: float, now: float, *, answered: bool) -> None:
        """Free the slot of the attempt sent at ``sent``; an answer while tasks wait feeds the ramp."""
        if self._waiters:
            self._release()
            if answered and (self._ramp is not None):
                self._answered(now - sent, now)
        else:
            self.in_use -= 1
            if (self.in_use == 0) and (self._ramp is not None):
                self._reset_at = now + RAMP_IDLE_RESET

    def abandon(self, sent: float) -> None:
        """The attempt sent at ``sent`` was cancelled before it had an outcome."""
        self._release()
        if self.breaker is not None:
            self.breaker.abandon(sent)

    def _hold(self, response: HttpResponse, now: float) -> None:
        retry_after = parse_retry_after(response.header("retry-after"))
        if retry_after is not None:
            self.held_until = max(self.held_until, now + retry_after)

    async def _wait_for_slot(self, deadline: float) -> bool:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(deadline - self._clock()):
                await waiter
        except TimeoutError:
            return self._give_up(waiter)
        except BaseException:
            self._give_up(waiter)
            raise
        return True

    def _give_up(self, waiter: asyncio.Future[None]) -> bool:
        """A waiter stops waiting. A slot handed to it just before goes on to the next waiter.

        A waiter that never got its slot was cancelled with its task, and ``_release`` skips it: taking
        it out of the queue here would cost the queue's length each time.
        """
        if waiter.done() and not waiter.cancelled():
            self._release()
        else:
            waiter.cancel()
        return False

    async def _wait_for_hold_and_token(self, deadline: float) -> bool:
        """Wait out a Retry-After hold, then for a token; ``False`` if the deadline would pass first."""
        now = self._clock()
        ready = max(now, self.held_until)
        if ready > now:
            _DELAYED_BY_HOLD.inc()
        bucket = self._bucket
        if bucket is not None:
            if bucket.available_at(ready) >= deadline:
                return False
            token_at = bucket.reserve(ready)
            if token_at > ready:
                _DELAYED_BY_RATE.inc()
            ready = token_at
        while ready > now:
            if ready >= deadline:
                return False
            await asyncio.sleep(ready - now)
            now = self._clock()
            # A Retry-After that came in meanwhile holds this attempt too.
            ready = max(now, self.held_until)
        return True

    def _restart_ramp(self) -> None:
        """The host has been idle long enough for its pooled connections to be gone: start from ``initial``."""
        self._reset_at = math.inf
        self._last_answer = -math.inf
        self._answer_gap = 0.0
        self._ticks = 0
        self._credit = 0.0
        if self._ramp is not None:
            self._pace = self._ramp.per_second
            self._set_level(self._ramp.initial)

    def _answered(self, seconds: float, now: float) -> None:
        """An answer that took ``seconds`` came while tasks wait: one more may go, unless some are stuck.

        By Little's law a host that answers every ``gap`` seconds, each answer taking ``seconds``,
        holds ``seconds / gap`` requests. Far more in flight than that means the rest are stuck
        (a weak server's overflowed backlog never saw them), and sending more would strand more.
        """
        if self._last_answer == -math.inf:
            self._answer_seconds = seconds
        else:
            self._answer_seconds += (seconds - self._answer_seconds) * RAMP_WEIGHT
            gap = now - self._last_answer
            average = self._answer_gap
            self._answer_gap = gap if average == 0.0 else average + (gap - average) * RAMP_WEIGHT
            accounted = self._answer_seconds / self._answer_gap if self._answer_gap > 0 else math.inf
            if self.in_use <= RAMP_HEADROOM * accounted + self._ramp_initial():
                self._raise_level(self.level + 1)
        self._last_answer = now

    def _ramp_initial(self) -> int:
        return 0 if self._ramp is None else self._ramp.initial

    def _raise_level(self, level: int) -> None:
        """Raise the ramp's level to ``level`` (no higher than the cap) and let waiters in under it."""
        if self._ramp is None:
            return
        if self.cap is not None:
            level = min(level, self.cap)
        if level > self.level:
            self._set_level(level)
            self._grant()

    def _grant(self) -> None:
        """Hand free slots under the limit to waiters, first come first served."""
        while self._waiters and ((self.limit is None) or (self.in_use < self.limit)):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def _start_ramp_timer(self) -> None:
        if (self._ramp is not None) and (self._ramp_timer is None):
            self._ramp_timer = asyncio.get_running_loop().call_later(RAMP_TICK, self._ramp_tick)

    def _ramp_tick(self) -> None:
        """Raise the level at the timer's pace while tasks wait; double the pace while the host hasn't answered."""
        self._ramp_timer = None
        if not self._waiters:
            return
        self._ticks += 1
        if (self._last_answer == -math.inf) and (self._ticks % RAMP_DOUBLE_EVERY == 0):
            self._pace *= 2
        self._credit += self._pace * RAMP_TICK
        step = int(self._credit)
        self._credit -= step
        self._raise_level(self.level + step)
        if (self.cap is None) or (self.level < self.cap):
            self._start_ramp_timer()

    def _release(self) -> None:
        """Free a slot, handing it straight to the next waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_use -= 1


class HostRegistry:
    """The ``Host`` of every target host, bounded by dropping idle ones (see the module docstring)."""

    def __init__(self, *, max_hosts: int = DEFAULT_MAX_HOSTS, clock: Callable[[], float] = time.monotonic) -> None:
        self._hosts: dict[str, Host] = {}
        #: The entry of each URL origin seen lately (``scheme://authority`` as written), so most
        #: lookups skip parsing the URL; see ``host``.
        self._origins: dict[str, Host] = {}
        #: The origin of the last lookup with a "/" after it, and its entry.
        self._last: tuple[str, Host] | None = None
        self._max_hosts = max_hosts
        self._sweep_above = max_hosts
        self._clock = clock

    def __len__(self) -> int:
        return len(self._hosts)

    def host(self, url: str, policy: HostPolicy) -> Host:
        """The entry of ``url``'s host, set to ``policy`` if the host was idle under another one."""
        last = self._last
        if (last is not None) and url.startswith(last[0]):
            # Tasks in a row often target one host: no string is cut or hashed for them.
            host = last[1]
        else:
            # Up to the first "/" past "https://": the origin as written, a cheaper key than host_key's parse.
            slash = url.find("/", 8)
            origin = url if slash < 0 else url[:slash]
            known = self._origins.get(origin)
            if known is None:
                host = self._entry(url, origin, policy)
            else:
                host = known
                self._last = (origin + "/", host)
        if (host.policy is not policy) and (host.policy != policy) and host.idle:
            host.configure(policy)
        return host

    def _entry(self, url: str, origin: str, policy: HostPolicy) -> Host:
        match = _AUTHORITY_RE.match(url)
        key = host_key(url)
        host = self._hosts.get(key)
        if host is None:
            if len(self._hosts) >= self._sweep_above:
                self._sweep()
            host = self._hosts[key] = Host(key, policy, self._clock)
        # The origin names the host only when it holds the whole authority: every URL that starts with
        # it and then "/" (or ends) has the same one.
        if (match is not None) and (match.end() <= len(origin)):
            if len(self._origins) >= self._sweep_above:
                self._origins.clear()
            self._origins[origin] = host
            self._last = (origin + "/", host)
        return host

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, h in self._hosts.items() if h.forgettable(now)]:
            del self._hosts[key]
        self._origins.clear()
        self._last = None
        # Sweep again only once the registry has grown as much again: the cost stays constant per entry.
        self._sweep_above = max(self._max_hosts, 2 * len(self._hosts))
