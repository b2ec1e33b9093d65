"""The target allowlist: names as written, addresses as resolved, and what the engine sends.

Host names other than ``localhost`` go through a resolver given to the allowlist, so no test
sends a DNS query off this machine; ``localhost`` and a name too long to encode go through the
system resolver.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from shared.engine import Engine, MockTransport, TargetAllowlist
from shared.engine.allowlist import RESOLVE_TTL, SystemResolver
from shared.errors import ConnectFailed, ErrorCode, TargetNotAllowed
from shared.models import HttpRequest, HttpResponse, Task


class FakeDns:
    """A resolver over a fixed table that counts its lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.lookups.append(host)
        return self.table.get(host, [])


async def allowed(allowlist: TargetAllowlist, url: str) -> bool:
    try:
        await allowlist.target(HttpRequest(url=url))
    except TargetNotAllowed:
        return False
    return True


async def test_name_entries_match_the_name_as_written_without_resolving_it() -> None:
    dns = FakeDns({"bmc.local.evil": ["10.0.0.1"]})
    allow = TargetAllowlist(["bmc.local", "*.fleet.test"], resolve=dns)

    assert await allowed(allow, "http://BMC.local/")
    assert await allowed(allow, "http://bmc.local./")
    assert await allowed(allow, "https://node-1.fleet.test:8443/redfish")
    assert not await allowed(allow, "http://fleet.test.evil.com/")
    assert not await allowed(allow, "http://bmc.local.evil/")
    assert not await allowed(allow, "http://10.0.0.1/")
    assert dns.lookups == []


async def test_ip_literals_match_network_entries() -> None:
    allow = TargetAllowlist(["10.0.0.0/8", "::1"], resolve=FakeDns({}))

    assert await allowed(allow, "http://10.1.2.3/x")
    assert await allowed(allow, "https://[::1]:8443/")
    # An IPv4 address written as IPv4-mapped IPv6 is the IPv4 address.
    assert await allowed(allow, "http://[::ffff:10.9.9.9]/")
    assert not await allowed(allow, "http://127.0.0.1/")
    assert not await allowed(allow, "http://[::ffff:127.0.0.1]/")
    assert await allowed(TargetAllowlist([]), "http://anything/")


async def test_a_name_is_allowed_by_networks_only_when_every_address_it_resolves_to_is_inside() -> None:
    dns = FakeDns(
        {
            "bmc-1.fleet": ["10.1.0.7"],
            "dual.fleet": ["10.1.0.8", "fd00::8"],
            "rebound.fleet": ["10.1.0.9", "169.254.169.254"],
            "metadata.evil": ["169.254.169.254"],
        }
    )
    allow = TargetAllowlist(["10.0.0.0/8", "fd00::/8"], resolve=dns)

    assert await allowed(allow, "http://bmc-1.fleet/")
    assert await allowed(allow, "https://dual.fleet/")
    assert not await allowed(allow, "http://rebound.fleet/")
    assert not await allowed(allow, "http://metadata.evil/latest/meta-data")
    assert dns.lookups == ["bmc-1.fleet", "dual.fleet", "rebound.fleet", "metadata.evil"]


async def test_a_name_that_resolves_to_nothing_is_a_connect_failure() -> None:
    allow = TargetAllowlist(["10.0.0.0/8"], resolve=FakeDns({}))

    with pytest.raises(ConnectFailed, match="the target's name did not resolve"):
        await allow.target(HttpRequest(url="http://unknown.fleet/"))


async def test_a_name_is_refused_as_written_when_there_are_no_network_entries() -> None:
    dns = FakeDns({"other.fleet": ["10.0.0.1"]})
    allow = TargetAllowlist(["bmc.local"], resolve=dns)

    with pytest.raises(TargetNotAllowed, match="the target's name is outside the allowlist"):
        await allow.target(HttpRequest(url="http://other.fleet/"))
    assert dns.lookups == []


async def test_a_backslash_in_the_host_part_is_refused() -> None:
    # reqwest reads the host of this URL as 127.0.0.1 and Python's urlsplit as 10.1.1.1. Validation
    # refuses it as user info; the allowlist refuses it too, for a request built without validation.
    url = "http://127.0.0.1:8080\\@10.1.1.1/"
    allow = TargetAllowlist(["10.0.0.0/8"], resolve=FakeDns({}))

    with pytest.raises(ValidationError, match="must not carry user info"):
        HttpRequest(url=url)
    with pytest.raises(TargetNotAllowed, match="backslash"):
        await allow.target(HttpRequest.model_construct(url=url, method="GET", headers=[], body=b""))


async def test_plain_http_to_a_resolved_name_goes_to_the_checked_address_with_its_host_header() -> None:
    allow = TargetAllowlist(
        ["10.0.0.0/8", "fd00::/8"], resolve=FakeDns({"bmc-1.fleet": ["10.1.0.7"], "v6.fleet": ["fd00::7"]})
    )
    original = HttpRequest(url="http://bmc-1.fleet:8080/redfish/v1?$expand=.#top", headers=[("Accept", "x")])

    sent = await allow.target(original)
    v6 = await allow.target(HttpRequest(url="http://v6.fleet/"))

    assert sent.url == "http://10.1.0.7:8080/redfish/v1?$expand=.#top"
    assert sent.headers == [("Host", "bmc-1.fleet:8080"), ("Accept", "x")]
    assert original.url == "http://bmc-1.fleet:8080/redfish/v1?$expand=.#top"
    assert v6.url == "http://[fd00::7]/"
    assert v6.headers == [("Host", "v6.fleet")]


async def test_https_and_names_allowed_as_written_are_sent_unchanged() -> None:
    allow = TargetAllowlist(["10.0.0.0/8", "bmc.local"], resolve=FakeDns({"bmc-1.fleet": ["10.1.0.7"]}))
    https = HttpRequest(url="https://bmc-1.fleet/redfish")
    named = HttpRequest(url="http://bmc.local/")
    own_host = HttpRequest(url="http://bmc-1.fleet/", headers=[("host", "alias.fleet")])

    assert await allow.target(https) is https
    assert await allow.target(named) is named
    assert (await allow.target(own_host)).headers == [("host", "alias.fleet")]


async def test_localhost_resolves_through_the_system_resolver() -> None:
    assert await allowed(TargetAllowlist(["127.0.0.0/8"]), "http://localhost:8080/")
    assert not await allowed(TargetAllowlist(["10.0.0.0/8"]), "http://localhost:8080/")


async def test_a_name_that_can_not_be_encoded_resolves_to_nothing_without_a_query() -> None:
    # A DNS label is at most 63 bytes: Python's IDNA codec refuses this before any query.
    assert await SystemResolver()("a" * 64 + ".fleet") == []


async def test_the_system_resolver_looks_a_name_up_once_for_concurrent_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = SystemResolver._lookup

    async def counted(host: str) -> list[str]:
        calls.append(host)
        await asyncio.sleep(0.05)
        return await real(host)

    monkeypatch.setattr(SystemResolver, "_lookup", staticmethod(counted))
    now = [time.monotonic()]
    resolver = SystemResolver(clock=lambda: now[0])

    together = await asyncio.gather(*(resolver("localhost") for _ in range(50)))
    again = await resolver("localhost")
    now[0] += RESOLVE_TTL
    later = await resolver("localhost")

    assert all(addresses == ["127.0.0.1"] for addresses in [*together, again, later])
    assert calls == ["localhost", "localhost"]


def _engine(allowlist: TargetAllowlist, seen: list[HttpRequest]) -> Engine:
    async def handler(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse(status_code=200)

    return Engine(transport=lambda policy, tls: MockTransport(handler), allowlist=allowlist)


async def test_the_engine_never_sends_a_task_whose_name_resolves_outside() -> None:
    seen: list[HttpRequest] = []
    engine = _engine(TargetAllowlist(["10.0.0.0/8"], resolve=FakeDns({"metadata.evil": ["169.254.169.254"]})), seen)

    result = await engine.run(Task(service_name="svc", request=HttpRequest(url="http://metadata.evil/")))

    assert result.error is not None
    assert result.error.code is ErrorCode.TARGET_NOT_ALLOWED
    assert result.error.message == "the target is not on the allowlist"
    assert result.attempts == 0
    assert seen == []


async def test_the_engine_sends_a_resolved_plain_http_task_to_the_checked_address() -> None:
    seen: list[HttpRequest] = []
    engine = _engine(TargetAllowlist(["10.0.0.0/8"], resolve=FakeDns({"bmc-1.fleet": ["10.1.0.7"]})), seen)
    task = Task(service_name="svc", request=HttpRequest(url="http://bmc-1.fleet/x"))

    result = await engine.run(task)

    assert result.response is not None
    assert [(r.url, r.headers) for r in seen] == [
        ("http://10.1.0.7/x", [("Host", "bmc-1.fleet"), ("User-Agent", "svc")])
    ]
    assert task.request.url == "http://bmc-1.fleet/x"


async def test_the_engine_ends_an_unresolvable_name_connect_error_unsent() -> None:
    seen: list[HttpRequest] = []
    engine = _engine(TargetAllowlist(["10.0.0.0/8"], resolve=FakeDns({})), seen)

    result = await engine.run(Task(service_name="svc", request=HttpRequest(url="http://unknown.fleet/")))

    assert result.error is not None
    assert result.error.code is ErrorCode.CONNECT_ERROR
    assert result.error.message == "could not connect to the target"
    assert seen == []


async def test_a_resolver_slower_than_the_deadline_ends_the_task_timeout() -> None:
    async def stuck(host: str) -> list[str]:
        await asyncio.sleep(30)
        return ["10.0.0.1"]

    seen: list[HttpRequest] = []
    engine = _engine(TargetAllowlist(["10.0.0.0/8"], resolve=stuck), seen)
    task = Task(service_name="svc", request=HttpRequest(url="http://slow.fleet/"), timeout=0.2)

    result = await asyncio.wait_for(engine.run(task), 5)

    assert result.error is not None
    assert result.error.code is ErrorCode.TIMEOUT
    assert seen == []
