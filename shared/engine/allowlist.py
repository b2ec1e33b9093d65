"""Which targets a task may call: an optional list of host names and IP networks.

An entry is an IP network (``10.0.0.0/8``, ``::1``), an exact host name (``bmc.local``) or a
suffix wildcard (``*.fleet.local``). Name entries match the host as written in the URL. Network
entries match addresses: an IP literal as written, and a host name by what it resolves to, every
address of which must be inside them. A name that matches no name entry is resolved only when
there are network entries; without them it is refused as written.

The transport resolves a name again when it connects, and a DNS server can answer differently
the second time (DNS rebinding). So a plain ``http`` request to a name allowed by its addresses
is sent to the address that was checked, with the name kept in the ``Host`` header. An ``https``
request can't be: its certificate is checked against the name, and neither transport takes the
name for TLS apart from the address for one request. Such a request is sent to the name, so a
name that is re-pointed between the check and the connect can still reach another address
(see the README).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from shared.errors import ConnectFailed, TargetNotAllowed
from shared.models import HttpRequest

__all__ = ["RESOLVE_TTL", "Resolve", "SystemResolver", "TargetAllowlist"]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The addresses a host name resolves to; an empty list when it resolves to none.
Resolve = Callable[[str], Awaitable[list[str]]]

#: Seconds the addresses of a name are reused by later tasks. A plain http task is sent to the
#: address that was checked, so reuse never lets a task reach an address that wasn't.
RESOLVE_TTL = 1.0
#: Names remembered at most; past this many the memory starts over.
MAX_REMEMBERED_NAMES = 10_000


class SystemResolver:
    """The system resolver, off the event loop: one lookup per name at a time, reused for ``RESOLVE_TTL``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._known: dict[str, tuple[list[str], float]] = {}
        self._lookups: dict[str, asyncio.Future[list[str]]] = {}

    async def __call__(self, host: str) -> list[str]:
        known = self._known.get(host)
        if (known is not None) and self._clock() - known[1] < RESOLVE_TTL:
            return known[0]
        lookup = self._lookups.get(host)
        if lookup is None:
            lookup = self._lookups[host] = asyncio.ensure_future(self._lookup(host))
            lookup.add_done_callback(lambda _: self._lookups.pop(host, None))
        # Shielded: one task's deadline must not cancel the lookup other tasks wait on.
        addresses = await asyncio.shield(lookup)
        if len(self._known) >= MAX_REMEMBERED_NAMES:
            self._known.clear()
        self._known[host] = (addresses, self._clock())
        return addresses

    @staticmethod
    async def _lookup(host: str) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            # gaierror is an OSError; a name that can't be IDNA-encoded never reaches a server.
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class TargetAllowlist:
    """An allowlist of targets; an empty one allows everything."""

    def __init__(self, entries: Iterable[str] = (), *, resolve: Resolve | None = None) -> None:
        self._networks: list[IpNetwork] = []
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if entry.startswith("*."):
                    self._suffixes.append(entry[1:])
                else:
                    self._names.add(entry)
        self.enabled = bool(self._networks or self._names or self._suffixes)
        self._resolve: Resolve = resolve or SystemResolver()

    async def target(self, request: HttpRequest) -> HttpRequest:
        """``request`` as it is to be sent, if its target is allowed.

        Raises ``TargetNotAllowed``, or ``ConnectFailed`` when the host is a name that had to be
        resolved and resolves to nothing. A plain http request to a name allowed by its addresses
        comes back addressed to the checked address (see the module's docstring).
        """
        if not self.enabled:
            return request
        split = urlsplit(request.url)
        if "\\" in split.netloc:
            # reqwest ends the host at a backslash, as browsers do, and this parser doesn't: the
            # host checked here would not be the one called.
            raise TargetNotAllowed("the target's URL has a backslash in its host part")
        host = (split.hostname or "").rstrip(".")
        literal = _address(host)
        if literal is not None:
            if not self._network_allows(literal):
                raise TargetNotAllowed("the target's address is outside the allowlist")
            return request
        if self._name_allows(host):
            return request
        if not self._networks:
            raise TargetNotAllowed("the target's name is outside the allowlist")
        addresses = await self._resolve(host)
        if not addresses:
            raise ConnectFailed("the target's name did not resolve")
        for address in addresses:
            resolved = _address(address)
            if (resolved is None) or not self._network_allows(resolved):
                raise TargetNotAllowed("the target's name resolves outside the allowlist")
        return _pinned(request, addresses[0])

    def _name_allows(self, host: str) -> bool:
        return host in self._names or any(host.endswith(suffix) for suffix in self._suffixes)

    def _network_allows(self, address: IpAddress) -> bool:
        return any(address in network for network in self._networks)


def _address(host: str) -> IpAddress | None:
    """``host`` as an IP address (an IPv4-mapped IPv6 address as the IPv4 one), or ``None`` for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _pinned(request: HttpRequest, address: str) -> HttpRequest:
    """A plain http ``request`` sent to ``address``, its host name kept in the ``Host`` header."""
    scheme, separator, rest = request.url.partition("://")
    if scheme.lower() != "http":
        return request
    netloc = urlsplit(request.url).netloc
    userinfo, at, host_and_port = netloc.rpartition("@")
    _, colon, port = host_and_port.partition(":")
    shown = f"[{address}]" if ":" in address else address
    # Only the host changes: the rest of the URL goes out byte for byte as the task wrote it.
    url = f"{scheme}{separator}{userinfo}{at}{shown}{colon}{port}{rest[len(netloc) :]}"
    headers = request.headers
    if request.header("host") is None:
        headers = [("Host", host_and_port), *headers]
    return request.model_copy(update={"url": url, "headers": headers})
