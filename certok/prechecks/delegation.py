"""Is ``_acme-challenge.<name>`` delegated to certok? Follow its CNAME chain and say.

The CA will ask its resolver for TXT at the challenge name and follow CNAMEs to certok's zone.
This check walks the same chain one hop at a time, querying type CNAME, because a recursive
resolver asked for any other type chases the chain itself and hides where it first pointed,
which is exactly what the user needs to see when it is wrong.

The walk stops as soon as it reaches the expected target: what lies beyond is certok's own
zone, and whether certok's DNS server answers is not the customer's problem to fix.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from certok.errors import InvalidDomain
from certok.names import registrable_domain, relative_name

# REFERENCE.md: "CNAME chains ≤ 8" (Boulder's limit for following aliases).
MAX_CHAIN = 8


@dataclass(frozen=True)
class DelegationResult:
    name: str  # the challenge name checked, e.g. "_acme-challenge.www.customer.test"
    expected: str  # "<label>.<zone>"
    found: str | None  # where the CNAME chain led (last target); None if no CNAME
    valid: bool
    detail: str  # what is wrong and what to do, or what is right
    cost_ms: int


class _LookupFailed(Exception):
    """The resolver could not say whether a CNAME exists (timeout, SERVFAIL, unreachable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def check_delegation(
    challenge_fqdn: str,
    expected_target: str,
    resolver: dns.asyncresolver.Resolver,
    *,
    max_chain: int = MAX_CHAIN,
) -> DelegationResult:
    """Follow the CNAME chain from challenge_fqdn; valid iff it ends at expected_target.

    Never raises for DNS failures: they come back as an invalid result whose detail says the
    lookup failed and to retry.
    """
    started = time.monotonic()
    name = _canonical(challenge_fqdn)
    expected = _canonical(expected_target)

    def result(found: str | None, valid: bool, detail: str) -> DelegationResult:
        cost_ms = round((time.monotonic() - started) * 1000)
        return DelegationResult(name, expected, found, valid, detail, cost_ms)

    chain: list[str] = []  # the targets, in order
    seen = {name}
    current = name
    while True:
        try:
            hops = await _cname_hops(resolver, current)
        except _LookupFailed as failure:
            return result(
                chain[-1] if chain else None,
                False,
                _lookup_failed_detail(name, expected, chain, current, failure.reason),
            )
        if not hops:
            break  # the chain ends here: no CNAME at `current`
        for target in hops:
            if target in seen:
                loop = " -> ".join(_fq(n) for n in [name, *chain, target])
                return result(
                    target,
                    False,
                    f"the CNAME chain of {_fq(name)} loops ({loop}): {_point_it(name, expected)}",
                )
            if len(chain) == max_chain:
                return result(
                    chain[-1],
                    False,
                    f"the CNAME chain of {_fq(name)} is longer than {max_chain} hops: "
                    f"{_point_it(name, expected)}",
                )
            chain.append(target)
            seen.add(target)
            if target == expected:
                return result(target, True, _in_place_detail(name, expected, chain))
        current = chain[-1]

    if not chain:
        return result(None, False, _add_it(name, expected))
    return result(chain[-1], False, _wrong_target_detail(name, expected, chain))


async def check_delegations(
    items: list[tuple[str, str]],
    resolver: dns.asyncresolver.Resolver,
    *,
    concurrency: int = 16,
) -> list[DelegationResult]:
    """check_delegation for each (challenge name, expected target), concurrently, in order.

    An apex and its wildcard share one challenge name: each distinct pair is looked up once.
    """
    gate = asyncio.Semaphore(concurrency)

    async def one(fqdn: str, target: str) -> DelegationResult:
        async with gate:
            return await check_delegation(fqdn, target, resolver)

    keys = [(_canonical(fqdn), _canonical(target)) for fqdn, target in items]
    tasks: dict[tuple[str, str], asyncio.Task[DelegationResult]] = {}
    async with asyncio.TaskGroup() as group:
        for key in keys:
            if key not in tasks:
                tasks[key] = group.create_task(one(*key))
    return [tasks[key].result() for key in keys]


async def _cname_hops(resolver: dns.asyncresolver.Resolver, owner: str) -> list[str]:
    """The CNAME targets starting at owner that one CNAME query reveals, in chain order.

    Usually one hop (or none); more when the resolver put the rest of the chain in its answer.
    """
    try:
        # dnspython may sleep a retry backoff past its lifetime; hold it to the lifetime.
        async with asyncio.timeout(resolver.lifetime):
            answer = await resolver.resolve(
                owner, dns.rdatatype.CNAME, raise_on_no_answer=False, search=False
            )
    except dns.resolver.NXDOMAIN as nxdomain:
        response = _nxdomain_response(nxdomain)
        return _follow(owner, response) if response is not None else []
    except (dns.resolver.LifetimeTimeout, TimeoutError):
        raise _LookupFailed("the resolver did not answer in time") from None
    except dns.resolver.NoNameservers as exc:
        raise _LookupFailed(_servers_failed(exc)) from None
    except (dns.exception.DNSException, OSError) as exc:
        raise _LookupFailed(f"the lookup failed ({type(exc).__name__}: {exc})") from None
    return _follow(owner, answer.response)


def _follow(owner: str, response: dns.message.Message) -> list[str]:
    aliases: dict[str, str] = {}
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME and len(rrset) > 0:
            aliases[_canonical(rrset.name.to_text())] = _canonical(rrset[0].target.to_text())
    hops: list[str] = []
    current = owner
    # Bounded by the answer's own size; a loop inside one answer stops at its first repeat.
    while current in aliases and len(hops) <= len(aliases):
        current = aliases[current]
        hops.append(current)
    return hops


def _nxdomain_response(nxdomain: dns.resolver.NXDOMAIN) -> dns.message.Message | None:
    responses: dict[Any, dns.message.Message] = nxdomain.kwargs.get("responses") or {}
    return next(iter(responses.values()), None)


def _servers_failed(exc: dns.resolver.NoNameservers) -> str:
    reasons = []
    for error in exc.kwargs.get("errors") or []:
        server, problem = error[0], error[3]
        if isinstance(problem, str):  # an rcode such as SERVFAIL or REFUSED
            reasons.append(f"{server} answered {problem}")
        elif isinstance(problem, ConnectionRefusedError):
            reasons.append(f"{server} is unreachable (connection refused)")
        else:
            reasons.append(f"{server} failed ({type(problem).__name__}: {problem})")
    return "; ".join(reasons) or "no resolver answered"


def _canonical(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _fq(name: str) -> str:
    """A name as a DNS console takes a target: fully qualified, with the trailing dot."""
    return f"{name}."


def _typed(fqdn: str) -> str:
    """A record name as the user types it in their zone (``_acme-challenge.www``)."""
    try:
        return relative_name(fqdn)
    except InvalidDomain:
        return _fq(fqdn)


def _in_zone(fqdn: str) -> str:
    try:
        return f" in the DNS zone of {registrable_domain(fqdn)}"
    except InvalidDomain:
        return ""


def _add_it(name: str, expected: str) -> str:
    return f"add {_typed(name)} CNAME {_fq(expected)}{_in_zone(name)} (no CNAME at {_fq(name)} yet)"


def _point_it(name: str, expected: str) -> str:
    return f"make {_typed(name)} a CNAME to {_fq(expected)}{_in_zone(name)}"


def _in_place_detail(name: str, expected: str, chain: list[str]) -> str:
    if len(chain) == 1:
        return f"{_typed(name)} CNAME {_fq(expected)} is in place"
    via = ", ".join(_fq(n) for n in chain[:-1])
    return f"{_typed(name)} leads to {_fq(expected)} via {via}: in place"


def _wrong_target_detail(name: str, expected: str, chain: list[str]) -> str:
    via = f" via {', '.join(_fq(n) for n in chain[:-1])}" if len(chain) > 1 else ""
    return (
        f"{_typed(name)} points to {_fq(chain[-1])}{via}, expected {_fq(expected)}: "
        f"{_point_it(name, expected)}"
    )


def _lookup_failed_detail(
    name: str, expected: str, chain: list[str], current: str, reason: str
) -> str:
    failed = f"looking up {_fq(current)} CNAME failed: {reason}"
    if not chain:
        return f"{failed}; this is usually temporary: retry in a minute"
    return (
        f"{_typed(name)} points to {_fq(chain[-1])}, expected {_fq(expected)}, and {failed}: "
        f"{_point_it(name, expected)}, or retry in a minute if {_fq(chain[-1])} "
        f"already leads to {_fq(expected)}"
    )
