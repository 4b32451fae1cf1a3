"""HTTP verification (/v1/cert/dv?type=http): does each host redirect the CA to certok, for us?

The check requests `http://<host>/.well-known/acme-challenge/<probe>` through the SSRF-safe
fetcher and follows the redirects as a CA would, until they point at certok's responder:

- tenant-bound form `<public_url>/v1/dv/<this tenant's handle>/<host>/<probe>`: the host is
  this tenant's for as long as the redirect says so;
- the seed's host-only form `<public_url>/v1/dv/<host>/<probe>`: it names no tenant, so the host
  is bound to the first tenant that verifies it, and refused to every other tenant.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.engine import transaction
from certok.db.models import Tenant
from certok.http01 import store as http01_store
from certok.prechecks.budget import PrecheckBudget
from certok.prechecks.http01 import HttpCheckResult, check_http_redirects
from certok.prechecks.outage import RESOLVER_UNAVAILABLE, ResolverWatch
from certok.prechecks.safe_http import SafeFetcher
from certok.tenants.service import TenantRef
from certok.verification.ownership import run_in_thread_loop
from certok.verification.results import CodeIssuer, DvItem, DvResult

RESPONDER_PATH = "/v1/dv/"


def nginx_block(target: str) -> str:
    """The three nginx lines to paste into the site's `server {}` block."""
    return (
        "location ~ ^/\\.well-known/acme-challenge/([-_a-zA-Z0-9]+)$ {\n"
        f"    return 302 {target}$host/$1;\n"
        "}"
    )


@dataclass(frozen=True)
class HttpOwnership:
    domain: str
    valid: bool
    detail: str
    cost_ms: int
    lookup_failed: bool = False


class HttpVerifier:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        public_url: str,
        fetcher_factory: Callable[[], SafeFetcher],
        http_port: int,
        code_ttl_seconds: int,
        clock: Clock = utcnow,
        budget: PrecheckBudget | None = None,
        watch: ResolverWatch | None = None,
    ) -> None:
        self.watch = watch or ResolverWatch("http", [])
        self._sessions = session_factory
        # Bounds the requests dv sends to customers' servers (the worker's ownership check
        # at order time is bounded by the orders themselves).
        self._budget = budget
        self._prefix = public_url.rstrip("/") + RESPONDER_PATH
        self._fetcher_factory = fetcher_factory
        self._http_port = http_port
        self._codes = CodeIssuer(session_factory, code_ttl_seconds, clock)
        self._clock = clock

    def bound_target(self, tenant: TenantRef) -> str:
        """The redirect target of the tenant-bound block (what certok recommends)."""
        return f"{self._prefix}{tenant.http_handle}/"

    def host_only_target(self) -> str:
        return self._prefix

    async def verify(self, tenant: TenantRef, domains: list[str]) -> DvResult:
        started = time.perf_counter()
        if self._budget is not None:
            self._budget.take(tenant.id, domains)
        checks = await self._check(tenant, domains)
        items = [
            DvItem(
                domain=check.domain,
                type=None,
                name=None,
                value=None,
                valid=check.valid,
                cost_ms=check.cost_ms,
                detail=None if check.valid else check.detail,
                code=RESOLVER_UNAVAILABLE if check.lookup_failed else None,
            )
            for check in checks
        ]
        return await self._codes.result(
            tenant.id, "http", domains, items, started, nginx_block(self.bound_target(tenant))
        )

    def ownership_problem(self, tenant_id: int, domains: list[str]) -> str | None:
        """Blocking, for worker threads (see ownership.py)."""
        return run_in_thread_loop(self._ownership_problem(tenant_id, domains))

    async def _ownership_problem(self, tenant_id: int, domains: list[str]) -> str | None:
        tenant = await asyncio.to_thread(self._tenant, tenant_id)
        checks = await self._check(tenant, domains)
        bad = [f"{c.domain}: {c.detail}" for c in checks if not c.valid]
        return "; ".join(bad) if bad else None

    # --- the check -------------------------------------------------------------------------
    async def _check(self, tenant: TenantRef, domains: list[str]) -> list[HttpOwnership]:
        probes = {domain: secrets.token_urlsafe(16) for domain in domains}
        results = await check_http_redirects(
            [(domain, self._prefix, probes[domain], None) for domain in domains],
            self._fetcher_factory(),
            http_port=self._http_port,
        )
        failed = [r for r in results if r.lookup_failed]
        if failed:
            self.watch.failed(failed[0].detail)
        elif results:
            self.watch.answered()
        judged = []
        for domain, result in zip(domains, results, strict=True):
            if result.lookup_failed:
                judged.append(
                    HttpOwnership(domain, False, result.detail, result.cost_ms, lookup_failed=True)
                )
                continue
            if not result.valid:
                judged.append(
                    HttpOwnership(domain, False, self._advice(tenant, result), result.cost_ms)
                )
                continue
            problem = await asyncio.to_thread(self._owner_problem, tenant, domain, result)
            judged.append(HttpOwnership(domain, problem is None, problem or "", result.cost_ms))
        return judged

    def _owner_problem(self, tenant: TenantRef, domain: str, result: HttpCheckResult) -> str | None:
        """Given a redirect that reaches the responder: does it make `domain` this tenant's?"""
        assert result.final_url is not None
        rest = urlsplit(result.final_url).path.split(RESPONDER_PATH, 1)[-1]
        parts = rest.split("/")
        host = parts[-2].rstrip(".").lower() if len(parts) >= 2 else ""
        if host != domain:
            return (
                f"the redirect names the host {host!r}, not {domain}: "
                "use $host in the nginx block as shown"
            )
        if len(parts) == 3:
            if parts[0] == tenant.http_handle:
                return None
            return (
                "the nginx block carries another tenant's handle: use "
                f"`{nginx_block(self.bound_target(tenant))}`"
            )
        with transaction(self._sessions) as session:
            owner = http01_store.claim_host(session, domain, tenant.id, self._clock)
        if owner == tenant.id:
            return None
        return (
            f"{domain} is bound to another tenant through the host-only nginx block: use the "
            f"tenant-bound block `{nginx_block(self.bound_target(tenant))}`, or validate with "
            "type=dns, or ask the operator to run `certok host release "
            f"{domain}` if the host changed hands"
        )

    def _advice(self, tenant: TenantRef, result: HttpCheckResult) -> str:
        # The pre-check explains with the host-only block; recommend the tenant-bound one.
        return result.detail.replace(
            f"{self._prefix}$host/$1", f"{self.bound_target(tenant)}$host/$1"
        )

    def _tenant(self, tenant_id: int) -> TenantRef:
        with self._sessions() as session:
            row = session.execute(
                select(Tenant.id, Tenant.name, Tenant.http_handle).where(Tenant.id == tenant_id)
            ).one()
            return TenantRef(row.id, row.name, row.http_handle)
