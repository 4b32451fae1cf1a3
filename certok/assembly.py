"""Builds certok's services from settings and a store: one recipe for `certok serve`, its worker
processes and the tests that run the API in process."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver

from certok.api.caches import TtlCache
from certok.api.post_api import PollGate
from certok.api.services import ApiServices
from certok.api.waiters import OrderWaiters
from certok.api.webhooks import EventApi
from certok.certificates.profiles import ProfileCatalog, directory_profiles
from certok.certificates.tasks import CertificateTasks
from certok.dnszone.solver import Dns01Solver
from certok.events.delivery import DeliveryWorker
from certok.events.outbox import order_finished
from certok.events.scans import EventScanner
from certok.http01.solver import Http01Solver
from certok.orders.accounts import AccountRegistry
from certok.orders.acme_order_budget import AcmeOrderBudget
from certok.orders.driver import OrderDriver, SolverRegistry
from certok.orders.finished_row import FinishedRow
from certok.orders.worker import Worker
from certok.persistence import Store
from certok.prechecks.addresses import AddressPolicy
from certok.prechecks.budget import PrecheckBudget
from certok.prechecks.outage import ResolverWatch
from certok.prechecks.resolver import make_blocking_resolver, make_resolver
from certok.prechecks.safe_http import FetchLimits, SafeFetcher, verified_tls_context
from certok.ratelimit import HTTP01_RESPONDER, UNVERIFIED_TOKENS, RateLimiter
from certok.settings import Settings
from certok.tenants.token_usage import TokenUsage
from certok.verification.dns_verifier import DnsVerifier
from certok.verification.http_verifier import HttpVerifier
from certok.verification.ownership import Ownership

LABEL_KEY_PURPOSE = "delegation-label"
TOKEN_CACHE_ENTRIES = 100_000
# CNAME lookups of dv requests running at once in one process (each waits on the resolver,
# without the GIL; a dv of many names spreads over them).
LOOKUP_THREADS = 16


@dataclass(frozen=True)
class Checks:
    """The delegation checks behind `/v1/cert/dv` and the worker's order-time ownership gate."""

    dns: DnsVerifier
    http: HttpVerifier
    lookups: ThreadPoolExecutor  # the API's CNAME lookups (blocking; see prechecks/delegation.py)

    def ownership(self) -> Ownership:
        return Ownership({"dns": self.dns, "http": self.http})

    def close(self) -> None:
        """Stop the lookup threads; a lookup under way ends within the resolver's lifetime."""
        self.lookups.shutdown(wait=False, cancel_futures=True)


def build_checks(settings: Settings, store: Store, *, label_key: bytes | None = None) -> Checks:
    # A resolver holds configuration only: one of each serves every request and worker thread.
    resolver = make_resolver(settings.resolvers, settings.resolver_timeout_seconds)
    blocking_resolver = make_blocking_resolver(
        settings.resolvers, settings.resolver_timeout_seconds
    )
    lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="certok-dns-lookup")

    def resolver_factory() -> dns.asyncresolver.Resolver:
        return resolver

    fetcher = SafeFetcher(
        resolver_factory,
        AddressPolicy(allow_loopback=settings.precheck_allow_loopback),
        FetchLimits(
            allowed_ports=frozenset(settings.precheck_allowed_ports),
            connect_timeout=settings.precheck_timeout_seconds,
            read_timeout=settings.precheck_timeout_seconds,
        ),
    )
    return Checks(
        dns=DnsVerifier(
            store.sessions,
            zone=settings.dns_zone,
            label_key=label_key or store.box.derive(LABEL_KEY_PURPOSE),
            resolver=blocking_resolver,
            lookups=lookups,
            code_ttl_seconds=settings.code_ttl_seconds,
            watch=ResolverWatch("dns", settings.resolvers),
        ),
        http=HttpVerifier(
            store.sessions,
            public_url=settings.public_url,
            fetcher_factory=lambda: fetcher,
            http_port=settings.http01_port,
            code_ttl_seconds=settings.code_ttl_seconds,
            budget=PrecheckBudget(
                settings.precheck_http_per_tenant_per_minute,
                settings.precheck_http_per_target_per_minute,
            ),
            watch=ResolverWatch("http", settings.resolvers),
        ),
        lookups=lookups,
    )


def build_api_services(
    settings: Settings,
    store: Store,
    checks: Checks,
    *,
    waiters: OrderWaiters,
    wake_worker: Callable[[], None],
    wake_deliveries: Callable[[], None] = lambda: None,
    **overrides: Any,
) -> ApiServices:
    """The API's services; `overrides` replace fields (tests: caches, limits)."""
    fields: dict[str, Any] = {
        "tokens": TtlCache(ttl=settings.token_cache_seconds, max_entries=TOKEN_CACHE_ENTRIES),
        "issued": TtlCache(
            ttl=settings.issued_cache_seconds, max_entries=settings.issued_cache_entries
        ),
        "token_usage": TokenUsage(store.sessions),
        "limiter": RateLimiter(
            {
                "dv": settings.rate_limit_dv_per_minute,
                "apply": settings.rate_limit_apply_per_minute,
                UNVERIFIED_TOKENS: settings.rate_limit_unverified_tokens_per_minute,
                HTTP01_RESPONDER: settings.rate_limit_http01_responder_per_minute,
            }
        ),
        "events": EventApi(
            check_url=build_webhook_fetcher(settings).check_url,
            wake=wake_deliveries,
            rotation_overlap_seconds=settings.webhook_secret_overlap_hours * 3600,
        ),
        "post_api_polls": PollGate(settings.post_api_poll_seconds),
    }
    fields["profiles"] = ProfileCatalog(
        directory_profiles(settings.issuers, settings.acme_timeout_seconds)
    )
    fields.update(overrides)
    return ApiServices(
        settings=settings,
        sessions=store.sessions,
        box=store.box,
        verifier=checks.dns,
        http_verifier=checks.http,
        waiters=waiters,
        wake_worker=wake_worker,
        **fields,
    )


def standard_solvers(settings: Settings) -> SolverRegistry:
    """certok's challenge types (an order's `challenge_type`) and the solvers presenting them."""
    return {
        "dns": Dns01Solver(settle_seconds=settings.effective_challenge_propagation_seconds),
        "http": Http01Solver(),
    }


def build_driver(
    settings: Settings,
    store: Store,
    checks: Checks,
    *,
    worker_id: str,
    on_challenge_records_changed: Callable[[], None] | None = None,
) -> OrderDriver:
    return OrderDriver(
        store.sessions,
        settings,
        store.box,
        AccountRegistry(store.sessions, settings, store.box),
        checks.ownership(),
        worker_id=worker_id,
        solvers=standard_solvers(settings),
        on_challenge_records_changed=on_challenge_records_changed,
        on_finished_in_transaction=order_finished,
        budget=AcmeOrderBudget(store.sessions, settings),
    )


def build_worker(
    settings: Settings,
    store: Store,
    checks: Checks,
    *,
    worker_id: str,
    on_challenge_records_changed: Callable[[], None] | None,
    on_order_finished: Callable[[int, FinishedRow | None], None] | None,
) -> Worker:
    driver = build_driver(
        settings,
        store,
        checks,
        worker_id=worker_id,
        on_challenge_records_changed=on_challenge_records_changed,
    )
    return Worker(
        store.sessions,
        driver,
        worker_id=worker_id,
        threads=settings.worker_threads,
        max_in_flight=settings.worker_max_orders,
        poll_seconds=settings.worker_poll_seconds,
        on_order_finished=on_order_finished,
    )


def build_webhook_fetcher(settings: Settings) -> SafeFetcher:
    """Webhook and notifyUrl deliveries: the HTTP-01 pre-check's address policy and ports,
    one request (no redirects) within `webhook_timeout_seconds`."""
    resolver = make_resolver(settings.resolvers, settings.resolver_timeout_seconds)
    timeout = settings.webhook_timeout_seconds
    return SafeFetcher(
        lambda: resolver,
        AddressPolicy(allow_loopback=settings.precheck_allow_loopback),
        FetchLimits(
            max_redirects=0,
            allowed_ports=frozenset(settings.precheck_allowed_ports),
            connect_timeout=timeout,
            read_timeout=timeout,
            total_timeout=timeout,
        ),
        post_tls=verified_tls_context(
            None if settings.webhook_ca_file is None else str(settings.webhook_ca_file)
        ),
    )


def build_delivery_worker(settings: Settings, store: Store, *, worker_id: str) -> DeliveryWorker:
    return DeliveryWorker(
        store.sessions,
        store.box,
        build_webhook_fetcher(settings),
        worker_id=worker_id,
        poll_seconds=settings.webhook_poll_seconds,
        retention_days=settings.webhook_log_retention_days,
    )


def build_event_scanner(
    settings: Settings, store: Store, *, on_queued: Callable[[], None] = lambda: None
) -> EventScanner:
    """renewal_due / expiring / revoked and delegation.broken: once per node (the process
    that runs the purge)."""
    return EventScanner(
        store.sessions,
        zone=settings.dns_zone,
        resolver=make_blocking_resolver(settings.resolvers, settings.resolver_timeout_seconds),
        certificate_seconds=settings.event_scan_seconds,
        delegation_seconds=settings.delegation_recheck_seconds,
        on_queued=on_queued,
    )


def build_certificate_tasks(settings: Settings, store: Store) -> CertificateTasks:
    """The worker's certificate tasks (revocations, ARI checks, renewals due)."""
    return CertificateTasks(
        store.sessions,
        AccountRegistry(store.sessions, settings, store.box),
        box=store.box,
        batch=settings.certificate_scan_batch,
        interval_seconds=settings.certificate_scan_seconds,
    )
