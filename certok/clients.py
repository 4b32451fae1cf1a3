"""Whose share a client address counts against, for per-client limits (API rate limits, DNS
TCP connections).

IPv4 addresses count one by one; IPv6 addresses by /64, one customer's usual allocation, so a
host cycling through the addresses of its own /64 gets no fresh share per address (nor fills a
table with them). An IPv4-mapped IPv6 address counts as its IPv4 address.
"""

from __future__ import annotations

from ipaddress import IPv6Address, ip_address, ip_network

IPV6_CLIENT_PREFIX = 64


def client_key(address: str) -> str:
    """`192.0.2.7` → `192.0.2.7`; `2001:db8:1:2::9` → `2001:db8:1:2::/64`; not an address:
    as given."""
    try:
        parsed = ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ip_network(f"{parsed}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(parsed)
