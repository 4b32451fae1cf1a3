"""Is ``_acme-challenge.<name>`` delegated to certok? Follow its CNAME chain and say.

The CA will ask its resolver for TXT at the challenge name and follow CNAMEs to certok's zone.
This check walks the same chain one hop at a time, querying type CNAME, because a recursive
resolver asked for any other type chases the chain itself and hides where it first pointed,
which is exactly what the user needs to see when it is wrong.

The walk stops as soon as it reaches the expected target: what lies beyond is certok's own
zone, and whether certok's DNS server answers is not the customer's problem to fix.

Lookups are blocking: a worker thread calls them directly, and the API's event loop runs them
on a thread pool of their own. dnspython's asyncio resolver costs about twice the CPU per
lookup (a new datagram endpoint, futures and loop turns per query), and a dv plus the order's
ownership re-check were a large share of certok's CPU under load. The common answer is read
without dnspython at all (cname_wire.py, a fraction of the CPU of ``dns.resolver``); every
other one goes through dnspython's blocking ``dns.resolver``.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from certok.errors import InvalidDomain
from certok.names import registrable_domain, relative_name
from certok.prechecks.cname_wire import ResolverSilent, lookup_aliases

# Boulder's limit for following aliases: a longer CNAME chain fails at the CA anyway.
MAX_CHAIN = 8
# What dnspython's resolver gets at least after the lean attempt timed out: one more try.
_LEAST_LIFETIME = 0.1


@dataclass(frozen=True)
class DelegationResult:
    name: str  # the challenge name checked, e.g. "_acme-challenge.www.customer.test"
    expected: str  # "<label>.<zone>"
    found: str | None  # where the CNAME chain led (last target); None if no CNAME
    valid: bool
    detail: str  # what is wrong and what to do, or what is right
    cost_ms: int
    # The resolvers could not answer (an outage on certok's side), so nothing is known.
    lookup_failed: bool = False


class _LookupFailed(Exception):
    """The resolver could not say whether a CNAME exists (timeout, SERVFAIL, unreachable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_delegation(
    challenge_fqdn: str,
    expected_target: str,
    resolver: dns.resolver.Resolver,
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

    def result(
        found: str | None, valid: bool, detail: str, lookup_failed: bool = False
    ) -> DelegationResult:
        cost_ms = round((time.monotonic() - started) * 1000)
        return DelegationResult(name, expected, found, valid, detail, cost_ms, lookup_failed)

    chain: list[str] = []  # the targets, in order
    seen = {name}
    current = name
    while True:
        try:
            hops = _cname_hops(resolver, current)
        except _LookupFailed as failure:
            return result(
                chain[-1] if chain else None,
                False,
                _lookup_failed_detail(name, expected, chain, current, failure.reason),
                lookup_failed=True,
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


def check_delegations(
    items: list[tuple[str, str]], resolver: dns.resolver.Resolver
) -> list[DelegationResult]:
    """check_delegation for each (challenge name, expected target), one after another, in order.

    For worker threads, whose orders hold one or two names. An apex and its wildcard share one
    challenge name: each distinct pair is looked up once.
    """
    keys = _keys(items)
    results = {key: check_delegation(*key, resolver) for key in _distinct(keys)}
    return [results[key] for key in keys]


async def check_delegations_on(
    executor: Executor, items: list[tuple[str, str]], resolver: dns.resolver.Resolver
) -> list[DelegationResult]:
    """check_delegations for the event loop: each distinct pair at once on ``executor``'s
    threads (the executor's size bounds how many lookups run together)."""
    keys = _keys(items)
    distinct = _distinct(keys)
    loop = asyncio.get_running_loop()
    found = await asyncio.gather(
        *(
            loop.run_in_executor(executor, functools.partial(check_delegation, *key, resolver))
            for key in distinct
        )
    )
    results = dict(zip(distinct, found, strict=True))
    return [results[key] for key in keys]


def _keys(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(_canonical(fqdn), _canonical(target)) for fqdn, target in items]


def _distinct(keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(keys))


def _cname_hops(resolver: dns.resolver.Resolver, owner: str) -> list[str]:
    """The CNAME targets starting at owner that one CNAME query reveals, in chain order.

    Usually one hop (or none); more when the resolver put the rest of the chain in its answer.
    The common answer is read without dnspython (cname_wire.py): one exchange with the first
    resolver, at most one attempt's timeout. Anything else goes to dnspython's resolver, with
    what is left of the lifetime; it gives up once that has passed (LifetimeTimeout), and a
    retry backoff it sleeps can only start before that.
    """
    started = time.monotonic()
    first = resolver.nameservers[0]
    if isinstance(first, dns.nameserver.Do53Nameserver):
        try:
            aliases = lookup_aliases(owner, (first.address, first.port), resolver.timeout)
        except ResolverSilent:
            # The first server had its try: dnspython starts with the next one, as it would.
            resolver = _first_server_last(resolver)
        else:
            if aliases is not None:
                return _chain_from(owner, aliases)
    lifetime = max(resolver.lifetime - (time.monotonic() - started), _LEAST_LIFETIME)
    try:
        answer = resolver.resolve(
            owner, dns.rdatatype.CNAME, raise_on_no_answer=False, search=False, lifetime=lifetime
        )
    except dns.resolver.NXDOMAIN as nxdomain:
        response = _nxdomain_response(nxdomain)
        return _follow(owner, response) if response is not None else []
    except dns.resolver.LifetimeTimeout:
        raise _LookupFailed("the resolver did not answer in time") from None
    except dns.resolver.NoNameservers as exc:
        raise _LookupFailed(_servers_failed(exc)) from None
    except (dns.exception.DNSException, OSError) as exc:
        raise _LookupFailed(f"the lookup failed ({type(exc).__name__}: {exc})") from None
    return _follow(owner, answer.response)


def _first_server_last(resolver: dns.resolver.Resolver) -> dns.resolver.Resolver:
    """A copy of ``resolver`` that asks its first server last (one server: itself)."""
    servers = list(resolver.nameservers)
    if len(servers) < 2:
        return resolver
    rotated = copy.copy(resolver)
    rotated.nameservers = [*servers[1:], servers[0]]
    return rotated


def _follow(owner: str, response: dns.message.Message) -> list[str]:
    aliases: dict[str, str] = {}
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.CNAME and len(rrset) > 0:
            aliases[_canonical(rrset.name.to_text())] = _canonical(rrset[0].target.to_text())
    return _chain_from(owner, aliases)


def _chain_from(owner: str, aliases: dict[str, str]) -> list[str]:
    """The targets reached from ``owner`` through ``aliases`` (owner → target), in order."""
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
        return (
            f"{failed}: certok's DNS resolvers did not answer, a problem on certok's side, "
            "not in your DNS; retry in a minute (the operator has been warned)"
        )
    return (
        f"{_typed(name)} points to {_fq(chain[-1])}, expected {_fq(expected)}, and {failed}: "
        f"{_point_it(name, expected)}, or retry in a minute if {_fq(chain[-1])} "
        f"already leads to {_fq(expected)}"
    )
