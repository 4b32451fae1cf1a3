"""What `certok serve` runs: every part in one process, or the parts of one process each.

`processes = 1` runs `serve`: the API, the authoritative DNS server and the issuance worker
on one event loop. With more, `certok.supervisor` starts one `serve_dns` process and N - 1
`serve_app` processes (API on ports the supervisor opened, plus a worker), so the DNS server
answers on a core of its own and the API and workers use the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from certok import metrics
from certok.acceptor import raise_open_files_limit
from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import (
    Checks,
    build_api_services,
    build_certificate_tasks,
    build_checks,
    build_delivery_worker,
    build_event_scanner,
    build_worker,
)
from certok.certificates.tasks import CertificateTasks
from certok.db.files import HEALTH_KEY, DatabaseFileWatch, run_file_watch, sqlite_file
from certok.dnszone.answer import ZoneConfig
from certok.dnszone.refresh_channel import RefreshClient, serve_refresh_requests
from certok.dnszone.server import start_dns_server
from certok.dnszone.zone_cache import ZoneCache, wait_until_served
from certok.events.delivery import DeliveryWorker
from certok.health import HealthChecks, reporter
from certok.http_listeners import (
    api_listeners,
    metrics_listeners,
    on_stop_signals,
    stop_on_signals,
)
from certok.orders.finished_row import FinishedRow
from certok.orders.leases import release_node_leases
from certok.orders.purge import run_purger
from certok.orders.service import finished_orders
from certok.orders.worker import Worker
from certok.persistence import Store, open_store
from certok.readiness import dns_check, process_checks
from certok.settings import Settings

log = logging.getLogger("certok")
# How long a worker waits for the DNS server to confirm it serves a new TXT value.
ZONE_RELOAD_TIMEOUT_SECONDS = 10.0


def run_event_loop(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where installed (the `fast` extra), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


async def serve(settings: Settings) -> None:
    """Run the API, the authoritative DNS server and the issuance worker in this process."""
    open_files = raise_open_files_limit()
    store = open_store(settings)
    zone_cache = ZoneCache(store.sessions)
    zone_cache.refresh()
    checks = build_checks(settings, store)
    waiters = OrderWaiters()
    waiters.bind(asyncio.get_running_loop())
    deliveries = build_delivery_worker(settings, store, worker_id=settings.effective_node_name)
    deliveries.release_own_leases()
    worker = build_worker(
        settings,
        store,
        checks,
        worker_id=settings.effective_node_name,
        # Same process: wait for the refresher (requests from many threads share one reload)
        # so a freshly written TXT value is served before the CA asks.
        on_challenge_records_changed=lambda: wait_until_served(
            zone_cache, ZONE_RELOAD_TIMEOUT_SECONDS
        ),
        on_order_finished=_and_wake(waiters.finished, deliveries.wake),
    )
    _resume_leases(store, settings.effective_node_name)
    dns_server = await _start_dns(settings, zone_cache)
    certificates = build_certificate_tasks(settings, store)
    health = process_checks(
        store.sessions,
        dns=dns_check(settings.dns_host, lambda: dns_server.port, settings.dns_zone),
        heartbeat=lambda: worker.heartbeat,
        stale_seconds=settings.worker_heartbeat_stale_seconds,
    )
    metrics.initialise(settings.issuers)
    # The DNS server's TCP connections share this process's descriptors with the API's.
    listeners = api_listeners(
        _app(settings, store, checks, waiters, worker, deliveries, certificates, health),
        settings,
        open_files=open_files,
        dns_connections=settings.dns_tcp_max_connections,
    )
    listeners += metrics_listeners(settings, store, dns_server)
    stop_on_signals(listeners)
    tasks = [
        asyncio.create_task(worker.run(), name="worker"),
        asyncio.create_task(certificates.run(), name="certificates"),
        asyncio.create_task(
            zone_cache.run_refresher(settings.dns_refresh_seconds), name="dns-refresh"
        ),
        _poll_waiters(waiters, store, settings),
        _start_purger(store, settings),
        asyncio.create_task(deliveries.run(), name="webhooks"),
        asyncio.create_task(
            build_event_scanner(settings, store, on_queued=deliveries.wake).run(),
            name="event-scans",
        ),
        *_watch_database_file(settings),
    ]
    try:
        await asyncio.gather(*(listener.serve() for listener in listeners))
    finally:
        worker.stop()
        await _cancel(tasks)
        await dns_server.close()
        checks.close()
        store.close()


async def serve_dns(settings: Settings, control: Path, on_ready: Callable[[], None]) -> None:
    """The DNS process: the zone from the database, answers, and reload requests at `control`."""
    raise_open_files_limit()
    store = open_store(settings, upgrade=False)
    zone_cache = ZoneCache(store.sessions)
    zone_cache.refresh()
    dns_server = await _start_dns(settings, zone_cache)
    refresher = asyncio.create_task(
        zone_cache.run_refresher(settings.dns_refresh_seconds), name="dns-refresh"
    )
    # /metrics for every process of the node: the DNS process is the one there is one of.
    metrics_servers = metrics_listeners(settings, store, dns_server)
    metrics_serving = [
        asyncio.create_task(listener.serve(), name="metrics") for listener in metrics_servers
    ]
    # Once per node: the DNS process is the one there is exactly one of.
    purger = _start_purger(store, settings)
    scans = asyncio.create_task(build_event_scanner(settings, store).run(), name="event-scans")
    control_server = await serve_refresh_requests(control, zone_cache, ZONE_RELOAD_TIMEOUT_SECONDS)
    stopped = asyncio.Event()
    on_stop_signals(stopped.set)
    on_ready()
    try:
        await stopped.wait()
    finally:
        for listener in metrics_servers:
            listener.should_exit = True
        await asyncio.gather(*metrics_serving, return_exceptions=True)
        control_server.close()
        await _cancel([refresher, purger, scans])
        await dns_server.close()
        store.close()


async def serve_app(
    settings: Settings,
    index: int,
    sockets: list[socket.socket],
    control: Path,
    writes: Path | None = None,
) -> None:
    """An API + worker process: `sockets` are the API listeners the supervisor opened;
    `writes` is the writer process's socket (SQLite), which runs the worker's writes."""
    open_files = raise_open_files_limit()
    store = open_store(settings, upgrade=False, writer_socket=writes)
    checks = build_checks(settings, store)
    waiters = OrderWaiters()
    waiters.bind(asyncio.get_running_loop())
    worker_id = f"{settings.effective_node_name}/{index}"
    deliveries = build_delivery_worker(settings, store, worker_id=worker_id)
    deliveries.release_own_leases()
    worker = build_worker(
        settings,
        store,
        checks,
        worker_id=worker_id,
        on_challenge_records_changed=RefreshClient(control, ZONE_RELOAD_TIMEOUT_SECONDS + 1),
        on_order_finished=_and_wake(waiters.finished, deliveries.wake),
    )
    # A restarted process resumes what its predecessor held (the supervisor freed the whole
    # node's leases once at start).
    worker.release_own_leases()
    certificates = build_certificate_tasks(settings, store)
    health = process_checks(
        store.sessions,
        dns=dns_check(settings.dns_host, lambda: settings.dns_port, settings.dns_zone),
        heartbeat=lambda: worker.heartbeat,
        stale_seconds=settings.worker_heartbeat_stale_seconds,
    )
    metrics.initialise(settings.issuers)
    listeners = api_listeners(
        _app(settings, store, checks, waiters, worker, deliveries, certificates, health),
        settings,
        open_files=open_files,
    )
    stop_on_signals(listeners)
    tasks = [
        asyncio.create_task(worker.run(), name="worker"),
        asyncio.create_task(certificates.run(), name="certificates"),
        _poll_waiters(waiters, store, settings),
        asyncio.create_task(deliveries.run(), name="webhooks"),
        *_watch_database_file(settings),
    ]
    try:
        await asyncio.gather(
            *(
                listener.serve(sockets=[sock])
                for listener, sock in zip(listeners, sockets, strict=True)
            )
        )
    finally:
        worker.stop()
        await _cancel(tasks)
        checks.close()
        store.close()


# --- parts -----------------------------------------------------------------------------------


def _app(
    settings: Settings,
    store: Store,
    checks: Checks,
    waiters: OrderWaiters,
    worker: Worker,
    deliveries: DeliveryWorker,
    certificates: CertificateTasks,
    health: HealthChecks,
) -> Starlette:
    return create_app(
        build_api_services(
            settings,
            store,
            checks,
            waiters=waiters,
            wake_worker=worker.wake,
            wake_deliveries=deliveries.wake,
            wake_certificates=certificates.wake,
            health=health,
        )
    )


def _and_wake(
    finished: Callable[[int, FinishedRow | None], None], wake: Callable[[], None]
) -> Callable[[int, FinishedRow | None], None]:
    """An order finished: tell the held apply requests (with what its last save wrote, when
    known), and the delivery worker when the order's end queued deliveries (its
    certificate.issued/failed rows were committed with it) or when that is not known. A
    wake claims in a transaction of its own: under load most orders queue none."""

    def both(order_id: int, row: FinishedRow | None) -> None:
        finished(order_id, row)
        if row is None or row.deliveries_queued != 0:
            wake()

    return both


def _resume_leases(store: Store, node: str) -> None:
    released = release_node_leases(store.sessions, node)
    if released:
        log.info("resuming %d order(s) left by a previous run of node %s", released, node)


async def _start_dns(settings: Settings, zone_cache: ZoneCache) -> Any:
    server = await start_dns_server(
        settings.dns_host,
        settings.dns_port,
        ZoneConfig.from_settings(settings),
        zone_cache,
        rate_limit_per_second=settings.dns_rate_limit_per_second or None,
        tcp_idle_timeout=settings.dns_tcp_idle_timeout_seconds,
        max_tcp_connections=settings.dns_tcp_max_connections,
        max_tcp_connections_per_client=settings.dns_tcp_max_connections_per_client,
    )
    log.info("DNS for %s on %s:%d (udp+tcp)", settings.dns_zone, settings.dns_host, server.port)
    return server


# How often held apply requests look for their orders finished by another process or node.
# With several API + worker processes a request is often held in one process while another's
# worker drives its order: at `worker_poll_seconds` (1 s) such a request waited half a second
# on average after its certificate was issued. One read covers every held order, and none is
# made while nothing is held.
HELD_ORDERS_POLL_SECONDS = 0.2


def _poll_waiters(waiters: OrderWaiters, store: Store, settings: Settings) -> asyncio.Task[None]:
    """Held apply requests learn of orders other processes or nodes finished."""

    def read_finished(order_ids: list[int]) -> list[int]:
        with store.sessions() as session:
            return finished_orders(session, order_ids)

    return asyncio.create_task(
        waiters.run_poller(
            read_finished, min(settings.worker_poll_seconds, HELD_ORDERS_POLL_SECONDS)
        ),
        name="waiters",
    )


def _start_purger(store: Store, settings: Settings) -> asyncio.Task[None]:
    return asyncio.create_task(
        run_purger(store.sessions, settings, settings.purge_interval_seconds), name="purge"
    )


def _watch_database_file(settings: Settings) -> list[asyncio.Task[None]]:
    """A SQLite file deleted or replaced under this process: log it, go not ready."""
    database = sqlite_file(settings.effective_database_url)
    if database is None:
        return []
    watch = DatabaseFileWatch(database, on_change=reporter(HEALTH_KEY))
    return [asyncio.create_task(run_file_watch(watch), name="db-file")]


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
