"""The one place that wires settings → database → services → servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial

import uvicorn

from certok.api.routes import ApiServices, create_app
from certok.api.waiters import OrderWaiters
from certok.dnszone.answer import ZoneConfig
from certok.dnszone.records import ZoneCache
from certok.dnszone.server import start_dns_server
from certok.domains.verify import DnsVerifier
from certok.orders.accounts import AccountRegistry
from certok.orders.driver import OrderDriver
from certok.orders.worker import Worker
from certok.prechecks.resolver import make_resolver
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
    driver = OrderDriver(
        store.sessions,
        settings,
        store.box,
        accounts,
        worker_id=node,
        # Same process: make a freshly written TXT value visible before the CA asks.
        on_challenge_records_changed=zone_cache.refresh,
    )
    worker = Worker(
        store.sessions,
        driver,
        worker_id=node,
        threads=settings.worker_threads,
        poll_seconds=settings.worker_poll_seconds,
        on_order_finished=waiters.finished,
    )
    released = worker.release_own_leases()
    if released:
        log.info("resuming %d order(s) left by a previous run of node %s", released, node)
    verifier = DnsVerifier(
        store.sessions,
        zone=settings.dns_zone,
        label_key=store.box.derive(LABEL_KEY_PURPOSE),
        resolver_factory=partial(
            make_resolver, settings.resolvers, settings.resolver_timeout_seconds
        ),
        code_ttl_seconds=settings.code_ttl_seconds,
    )
    app = create_app(
        ApiServices(
            settings=settings,
            sessions=store.sessions,
            box=store.box,
            verifier=verifier,
            waiters=waiters,
            wake_worker=worker.wake,
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
    http = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level=settings.log_level.lower(),
            access_log=False,
            lifespan="off",
        )
    )
    tasks = [
        asyncio.create_task(worker.run(), name="worker"),
        asyncio.create_task(
            zone_cache.run_refresher(settings.dns_refresh_seconds), name="dns-refresh"
        ),
    ]
    try:
        await http.serve()
    finally:
        worker.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await dns_server.close()
        store.engine.dispose()
