"""The static part of certok's zone: its name, nameservers, TTL and fixed host addresses."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from certok.settings import Settings

# SOA timers matter only to secondaries, which certok does not have; common values.
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 1209600

# Names the database may hold: relative to the zone, hostname-ish labels.
RELATIVE_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")


@dataclass(frozen=True)
class ZoneConfig:
    """The static part of the zone: its name, nameservers and TTL."""

    zone: str  # e.g. "acme.svc.test" (no trailing dot, lowercase)
    nameservers: tuple[str, ...]  # NS names, e.g. ("ns1.acme.svc.test",)
    nameserver_addresses: tuple[str, ...]  # glue A/AAAA for NS names inside the zone
    ttl: int  # TTL for all answers; SOA MINIMUM = ttl too (negative caching stays short)
    max_txt_values: int = 8
    # Fixed A/AAAA records inside the zone, e.g. certok's own API host name:
    # (("svc", ("127.0.0.1",)),) — relative names; a tuple of pairs keeps the config hashable.
    host_addresses: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        zone = self.zone.strip().rstrip(".").lower()
        nameservers = tuple(n.strip().rstrip(".").lower() for n in self.nameservers)
        if not zone:
            raise ValueError("the DNS zone must be a name such as acme.example.com")
        if not nameservers or not all(nameservers):
            raise ValueError("the DNS zone needs at least one nameserver name")
        for address in self.nameserver_addresses:
            ipaddress.ip_address(address)  # raises ValueError with the bad address
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise ValueError("the DNS TTL must be between 0 and 2147483647 seconds")
        if self.max_txt_values < 1:
            raise ValueError("max_txt_values must be at least 1")
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "nameservers", nameservers)
        object.__setattr__(self, "nameserver_addresses", tuple(self.nameserver_addresses))
        hosts = []
        for name, addresses in self.host_addresses:
            relative = name.strip().rstrip(".").lower().removesuffix("." + zone)
            if not RELATIVE_NAME.fullmatch(relative):
                raise ValueError(f"host name {name!r} must be a name inside the zone {zone}")
            for address in addresses:
                ipaddress.ip_address(address)
            hosts.append((relative, tuple(addresses)))
        object.__setattr__(self, "host_addresses", tuple(hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> ZoneConfig:
        return cls(
            zone=settings.dns_zone,
            nameservers=tuple(settings.nameserver_names),
            nameserver_addresses=tuple(settings.dns_nameserver_addresses),
            ttl=settings.dns_ttl,
            max_txt_values=settings.dns_max_txt_values,
            host_addresses=tuple(
                (name, tuple(addresses)) for name, addresses in settings.dns_hosts.items()
            ),
        )
