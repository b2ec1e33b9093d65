"""Which targets a task may call: an optional list of host names and IP networks.

An entry is an IP network (``10.0.0.0/8``, ``::1``), an exact host name (``bmc.local``) or a
suffix wildcard (``*.fleet.local``). Host names are matched as written in the URL, never
resolved, so a name matches only name entries and an IP literal only network entries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

__all__ = ["TargetAllowlist"]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetAllowlist:
    """An allowlist of targets; an empty one allows everything."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._networks: list[IpNetwork] = []
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
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

    def allows(self, url: str) -> bool:
        """Whether ``url``'s host is on the list (always, when the list is empty)."""
        if not self.enabled:
            return True
        host = (urlsplit(url).hostname or "").lower()
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self._names or any(host.endswith(suffix) for suffix in self._suffixes)
        return any(address in network for network in self._networks)
