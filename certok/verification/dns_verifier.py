"""dns verification (/v1/cert/dv): is each name's `_acme-challenge` CNAME delegated to this
tenant? If so, a code. Also the order-time ownership re-check of dns orders."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor

import dns.resolver
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.engine import transaction
from certok.db.models import Delegation
from certok.domains.delegations import ensure_delegations
from certok.domains.known_labels import KnownLabels
from certok.names import base_name, challenge_name, relative_challenge_name
from certok.prechecks.delegation import (
    DelegationResult,
    check_delegations,
    check_delegations_on,
)
from certok.prechecks.outage import RESOLVER_UNAVAILABLE, ResolverWatch
from certok.tenants.service import TenantRef
from certok.verification.results import CodeIssuer, DvItem, DvResult

_DELEGATIONS = Delegation.__table__
# Read on every dv and every order: built once (see the hot statements in orders/rows.py).
_LABELS = select(_DELEGATIONS.c.base_name, _DELEGATIONS.c.label).where(
    _DELEGATIONS.c.tenant_id == bindparam("b_tenant_id"),
    _DELEGATIONS.c.base_name.in_(bindparam("b_bases", expanding=True)),
)


class DnsVerifier:
    """Checks the `_acme-challenge` CNAMEs of a tenant's names through the configured resolver."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        zone: str,
        label_key: bytes,
        resolver: dns.resolver.Resolver,
        lookups: Executor,
        code_ttl_seconds: int,
        clock: Clock = utcnow,
        watch: ResolverWatch | None = None,
    ) -> None:
        """``lookups`` runs the API's CNAME lookups (blocking, see prechecks/delegation.py)."""
        self.watch = watch or ResolverWatch("dns", [str(s) for s in resolver.nameservers])
        self._sessions = session_factory
        self._zone = zone
        self._label_key = label_key
        self._resolver = resolver
        self._lookups = lookups
        self._codes = CodeIssuer(session_factory, code_ttl_seconds, clock)
        self._clock = clock
        # Delegations already read: nearly every dv and order asks for names seen before.
        self._known = KnownLabels()

    async def verify(self, tenant: TenantRef, domains: list[str]) -> DvResult:
        started = time.perf_counter()
        bases = [base_name(d) for d in domains]
        labels = await asyncio.to_thread(self._labels, tenant.id, bases)
        unique_bases = sorted(set(bases))
        targets = {b: f"{labels[b]}.{self._zone}" for b in unique_bases}
        results = await check_delegations_on(
            self._lookups, [(challenge_name(b), targets[b]) for b in unique_bases], self._resolver
        )
        by_base = dict(zip(unique_bases, results, strict=True))
        self._note_lookups(results)
        items = [
            DvItem(
                domain=domain,
                type="CNAME",
                name=relative_challenge_name(domain),
                value=targets[base],
                valid=by_base[base].valid,
                cost_ms=by_base[base].cost_ms,
                detail=None if by_base[base].valid else by_base[base].detail,
                code=RESOLVER_UNAVAILABLE if by_base[base].lookup_failed else None,
            )
            for domain, base in zip(domains, bases, strict=True)
        ]
        return await self._codes.result(tenant.id, "dns", domains, items, started)

    def ownership_problem(self, tenant_id: int, domains: list[str]) -> str | None:
        """Why the names are not (or no longer) delegated to this tenant, or None.

        Blocking, for worker threads: the lookups run in the calling thread.
        """
        bases = sorted({base_name(d) for d in domains})
        labels = self._existing_labels(tenant_id, bases)
        missing = [b for b in bases if b not in labels]
        if missing:
            return f"{', '.join(missing)} not delegated to this tenant: call /v1/cert/dv"
        items = [(challenge_name(b), f"{labels[b]}.{self._zone}") for b in bases]
        results = check_delegations(items, self._resolver)
        self._note_lookups(results)
        bad = [r.detail for r in results if not r.valid]
        return "; ".join(bad) if bad else None

    def _note_lookups(self, results: list[DelegationResult]) -> None:
        failed = [r for r in results if r.lookup_failed]
        if failed:
            self.watch.failed(failed[0].detail)
        elif results:
            self.watch.answered()

    def _existing_labels(self, tenant_id: int, bases: list[str]) -> dict[str, str]:
        labels = self._known.known(tenant_id, bases)
        unknown = sorted({base for base in bases if base not in labels})
        if unknown:
            with self._sessions() as session:
                rows = session.execute(_LABELS, {"b_tenant_id": tenant_id, "b_bases": unknown})
                read = {row.base_name: row.label for row in rows}
            self._known.remember(tenant_id, read)
            labels.update(read)
        return labels

    def labels(self, tenant_id: int, bases: list[str]) -> dict[str, str]:
        """The CNAME labels of base names, allocated where new (the console's "add names")."""
        return self._labels(tenant_id, bases)

    def _labels(self, tenant_id: int, bases: list[str]) -> dict[str, str]:
        # Nearly always every label exists already: read without taking the write lock.
        existing = self._existing_labels(tenant_id, bases)
        if len(existing) == len(set(bases)):
            return existing
        with transaction(self._sessions) as session:
            labels = ensure_delegations(session, tenant_id, bases, self._label_key, self._clock)
        self._known.remember(tenant_id, labels)  # committed: stored for good
        return labels
