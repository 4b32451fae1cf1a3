"""The one place that wires settings → database → services → servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import dns.asyncresolver
import uvicorn
from starlette.applications import Starlette

from certok.api.caches import TtlCache
from certok.api.ratelimit import RateLimiter
from certok.api.routes import ApiServices, create_app
from certok.api.waiters import OrderWaiters
from certok.dnszone.answer import ZoneConfig
from certok.dnszone.records import ZoneCache
from certok.dnszone.server import start_dns_server
from certok.domains.http_verify import HttpVerifier
from certok.domains.ownership import Ownership
from certok.domains.verify import DnsVerifier
from certok.orders.accounts import AccountRegistry
from certok.orders.driver import OrderDriver
from certok.orders.worker import Worker
from certok.prechecks.addresses import AddressPolicy
from certok.prechecks.resolver import make_resolver
from certok.prechecks.safe_http import FetchLimits, SafeFetcher
from certok.settings import Settings
from certok.store import open_store

log = logging.getLogger("certok")

LABEL_KEY_PURPOSE = "delegation-label"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(settings: Settings) -> None:
    """Run the API, the authoritative DNS server and the issuance worker in this process."""
    store = open_store(settings)
    zone_cache = ZoneCache(store.sessions)
    zone_cache.refresh()
    waiters = OrderWaiters()
    waiters.bind(asyncio.get_running_loop())
    accounts = AccountRegistry(store.sessions, settings, store.box)
    node = settings.effective_node_name
    # A resolver holds configuration only: one serves every request and worker thread.
    resolver = make_resolver(settings.resolvers, settings.resolver_timeout_seconds)

    def resolver_factory() -> dns.asyncresolver.Resolver:
        return resolver

    verifier = DnsVerifier(
        store.sessions,
        zone=settings.dns_zone,
        label_key=store.box.derive(LABEL_KEY_PURPOSE),
        resolver_factory=resolver_factory,
        code_ttl_seconds=settings.code_ttl_seconds,
    )
    fetcher = SafeFetcher(
        resolver_factory,
        AddressPolicy(allow_loopback=settings.precheck_allow_loopback),
        FetchLimits(
            allowed_ports=frozenset(settings.precheck_allowed_ports),
            connect_timeout=settings.precheck_timeout_seconds,
            read_timeout=settings.precheck_timeout_seconds,
        ),
    )
    http_verifier = HttpVerifier(
        store.sessions,
        public_url=settings.public_url,
        fetcher_factory=lambda: fetcher,
        http_port=settings.http01_port,
        code_ttl_seconds=settings.code_ttl_seconds,
    )
    driver = OrderDriver(
        store.sessions,
        settings,
        store.box,
        accounts,
        Ownership({"dns": verifier, "http": http_verifier}),
        worker_id=node,
        # Same process: make a freshly written TXT value visible before the CA asks.
        on_challenge_records_changed=zone_cache.refresh,
    )
    worker = Worker(
        store.sessions,
        driver,
        worker_id=node,
        threads=settings.worker_threads,
        max_in_flight=settings.worker_max_orders,
        poll_seconds=settings.worker_poll_seconds,
        on_order_finished=waiters.finished,
    )
    released = worker.release_own_leases()
    if released:
        log.info("resuming %d order(s) left by a previous run of node %s", released, node)
    app = create_app(
        ApiServices(
            settings=settings,
            sessions=store.sessions,
            box=store.box,
            verifier=verifier,
            http_verifier=http_verifier,
            waiters=waiters,
            wake_worker=worker.wake,
            tokens=TtlCache(ttl=settings.token_cache_seconds, max_entries=100_000),
            limiter=RateLimiter(
                {
                    "dv": settings.rate_limit_dv_per_minute,
                    "apply": settings.rate_limit_apply_per_minute,
                }
            ),
        )
    )
    dns_server = await start_dns_server(
        settings.dns_host,
        settings.dns_port,
        ZoneConfig.from_settings(settings),
        zone_cache,
        rate_limit_per_second=settings.dns_rate_limit_per_second or None,
    )
    log.info("DNS for %s on %s:%d (udp+tcp)", settings.dns_zone, settings.dns_host, dns_server.port)
    listeners = [
        _HttpListener(_uvicorn_config(app, settings, settings.api_host, settings.api_port))
    ]
    if settings.https_enabled:
        listeners.append(
            _HttpListener(
                _uvicorn_config(
                    app,
                    settings,
                    settings.https_host,
                    settings.https_port,
                    ssl_certfile=str(settings.tls_cert_file),
                    ssl_keyfile=str(settings.tls_key_file),
                )
            )
        )
    _stop_on_signals(listeners)
    tasks = [
        asyncio.create_task(worker.run(), name="worker"),
        asyncio.create_task(
            zone_cache.run_refresher(settings.dns_refresh_seconds), name="dns-refresh"
        ),
    ]
    try:
        await asyncio.gather(*(listener.serve() for listener in listeners))
    finally:
        worker.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await dns_server.close()
        store.engine.dispose()


class _HttpListener(uvicorn.Server):
    """A uvicorn server whose signals are handled by `serve` for all listeners at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(
    app: Starlette, settings: Settings, host: str, port: int, **tls: str
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="off",
        **tls,  # type: ignore[arg-type]
    )


def _stop_on_signals(listeners: list[_HttpListener]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("stopping")
        for listener in listeners:
            listener.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
