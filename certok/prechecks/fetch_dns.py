"""The DNS step of a safe fetch: a name's addresses, every one checked against the policy.

The name is resolved once through the configured resolver (never the system resolver) and
the fetcher connects only to addresses returned from here, so a rebinding DNS server gets no
second lookup to answer differently.
"""

from __future__ import annotations

import asyncio
import ipaddress

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from certok.prechecks.addresses import AddressPolicy, AddressRefused, IPAddress
from certok.prechecks.fetch_types import Failure, Refusal


async def resolve_checked(
    host: str, resolver: dns.asyncresolver.Resolver, policy: AddressPolicy
) -> list[IPAddress]:
    """The addresses to try, in order (IPv6 first, as Let's Encrypt), all of them checked."""
    name = dns.name.from_text(host)  # absolute: no search list can be appended
    results = await asyncio.gather(
        _lookup(resolver, host, name, dns.rdatatype.AAAA),
        _lookup(resolver, host, name, dns.rdatatype.A),
        return_exceptions=True,
    )
    addresses: list[IPAddress] = []
    failures: list[Failure] = []
    for result in results:
        if isinstance(result, Failure):
            failures.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            addresses.extend(result)
    if not addresses:
        if failures:
            raise failures[0]
        raise Failure("dns", f"{host} has no A or AAAA record")
    # Every address, not only the one used: a name that mixes a public address with an
    # internal one is a probe, and which one a CA picks is not certok's to guess.
    for address in addresses:
        try:
            policy.check(address)
        except AddressRefused as refusal:
            raise Refusal(
                "address", f"{host} resolves to {refusal.address}, {refusal.purpose}"
            ) from None
    first_v6 = next((a for a in addresses if a.version == 6), None)
    first_v4 = next((a for a in addresses if a.version == 4), None)
    return [a for a in (first_v6, first_v4) if a is not None]


async def _lookup(
    resolver: dns.asyncresolver.Resolver,
    host: str,
    name: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
) -> list[IPAddress]:
    kind = dns.rdatatype.to_text(rdtype)
    try:
        # dnspython may sleep a retry backoff past its lifetime; hold it to the lifetime.
        async with asyncio.timeout(resolver.lifetime):
            answer = await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        raise Failure("dns", f"{host} does not exist in DNS (NXDOMAIN)") from None
    except (dns.resolver.LifetimeTimeout, TimeoutError):
        raise Failure("resolver", f"looking up {host} {kind} timed out") from None
    except dns.resolver.NoNameservers:
        raise Failure(
            "resolver", f"looking up {host} {kind} failed: no resolver gave an answer"
        ) from None
    except (dns.exception.DNSException, OSError) as exc:
        raise Failure(
            "resolver", f"looking up {host} {kind} failed ({type(exc).__name__}: {exc})"
        ) from None
    if answer.rrset is None:
        return []
    return [ipaddress.ip_address(rdata.address) for rdata in answer.rrset]
