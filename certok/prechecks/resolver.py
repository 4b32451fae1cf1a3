"""The DNS resolver every pre-check uses: only the addresses certok's settings give.

The host's /etc/resolv.conf is never read: certok must see the DNS the way the CA's resolvers
do, and on the test rig the system resolver is not even reachable.
"""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.name
import dns.nameserver
import dns.resolver

from certok.errors import ConfigurationError

DNS_PORT = 53
# RFC 9715 / DNS Flag Day 2020: a UDP payload that avoids IP fragmentation.
EDNS_PAYLOAD = 1232
# Each server gets this many tries within the lifetime, so one lost UDP packet is not a failure.
_TRIES_PER_SERVER = 2


def parse_resolver_address(text: str) -> tuple[str, int]:
    """Parse ``127.0.0.1``, ``127.0.0.1:5353``, ``::1`` or ``[::1]:53`` into (address, port).

    Only IP literals: a resolver given by name would need another resolver to find it.
    """
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        host, sep, after = value[1:].partition("]")
        if not sep or (after and not after.startswith(":")):
            raise _bad_address(text)
        port_text = after[1:]
        if after and not port_text:
            raise _bad_address(text)
    elif value.count(":") == 1:
        # One colon is host:port; more is a bare IPv6 address.
        host, _, port_text = value.partition(":")
        if not port_text:
            raise _bad_address(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise _bad_address(text) from None
    if value.startswith("[") and address.version != 6:
        raise _bad_address(text)
    port = DNS_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad_address(text)
        port = int(port_text)
    return str(address), port


def make_resolver(addresses: list[str], timeout: float) -> dns.asyncresolver.Resolver:
    """A stub resolver for the event loop, asking exactly these servers, giving up after
    ``timeout`` seconds (the web server pre-check's address lookups)."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    _configure(resolver, addresses, timeout)
    return resolver


def make_blocking_resolver(addresses: list[str], timeout: float) -> dns.resolver.Resolver:
    """The same resolver for threads (the CNAME checks, see delegation.py)."""
    resolver = dns.resolver.Resolver(configure=False)
    _configure(resolver, addresses, timeout)
    return resolver


def _configure(resolver: dns.resolver.BaseResolver, addresses: list[str], timeout: float) -> None:
    if not addresses:
        raise ConfigurationError(
            'no DNS resolvers configured: set resolvers (CERTOK_RESOLVERS), e.g. ["127.0.0.1:5353"]'
        )
    if timeout <= 0:
        raise ConfigurationError(
            f"resolver timeout must be positive, got {timeout}: set resolver_timeout_seconds"
        )
    resolver.nameservers = [
        dns.nameserver.Do53Nameserver(address, port)
        for address, port in map(parse_resolver_address, addresses)
    ]
    # lifetime bounds the whole lookup; timeout is one attempt at one server.
    resolver.lifetime = timeout
    resolver.timeout = timeout / (_TRIES_PER_SERVER * len(addresses))
    # Names are always absolute here: no search list, no local domain appended.
    resolver.search = []
    resolver.domain = dns.name.root
    resolver.use_search_by_default = False
    resolver.use_edns(0, 0, EDNS_PAYLOAD)


def _bad_address(text: str) -> ConfigurationError:
    return ConfigurationError(
        f"resolver address {text!r} is not valid: give an IP address with an optional port, "
        "like 127.0.0.1, 127.0.0.1:5353, ::1 or [::1]:5353"
    )
