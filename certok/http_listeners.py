"""The HTTP listeners of a certok process: the API's (HTTP, and HTTPS when configured) and
/metrics', as uvicorn servers sharing a connection cap (`certok.api.connections`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from certok.acceptor import api_connection_budget
from certok.api.connections import ConnectionGuard, ConnectionLimits, GuardedServer
from certok.metrics import MetricsPage, add_scrape_source, metrics_app
from certok.persistence import Store
from certok.readiness import DATABASE_GAUGES
from certok.settings import Settings

log = logging.getLogger("certok")
METRICS_MAX_CONNECTIONS = 32

# Connections the kernel queues for the API's accept loop.
BACKLOG = 2048


class HttpListener(GuardedServer):
    """A uvicorn server whose signals are handled by `serve` for all listeners at once, and
    whose connections are limited (`certok.api.connections`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen_sockets(settings: Settings) -> list[socket.socket]:
    """The API's listening sockets (HTTP, and HTTPS when configured), opened once so that
    several processes share them (the supervisor's job)."""
    addresses = [(settings.api_host, settings.api_port)]
    if settings.https_enabled:
        addresses.append((settings.https_host, settings.https_port))
    sockets = []
    for host, port in addresses:
        config = uvicorn.Config(_no_app, host=host, port=port)
        sockets.append(config.bind_socket())
    return sockets


async def _no_app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never run
    raise RuntimeError("bind-only config")


def api_listeners(
    app: Starlette,
    settings: Settings,
    *,
    open_files: int | None = None,
    dns_connections: int = 0,
) -> list[HttpListener]:
    """HTTP, and HTTPS when configured: in `listen_sockets`' order, sharing one connection
    cap, which leaves `dns_connections` and a reserve of the `open_files` limit free."""
    guard = ConnectionGuard(connection_limits(settings, open_files, dns_connections))
    configs = [uvicorn_config(app, settings, settings.api_host, settings.api_port)]
    if settings.https_enabled:
        configs.append(
            uvicorn_config(
                app,
                settings,
                settings.https_host,
                settings.https_port,
                ssl_certfile=str(settings.tls_cert_file),
                ssl_keyfile=str(settings.tls_key_file),
            )
        )
    return [HttpListener(config, guard) for config in configs]


def connection_limits(
    settings: Settings, open_files: int | None, dns_connections: int
) -> ConnectionLimits:
    cap = settings.api_max_connections
    if open_files is not None:
        cap = api_connection_budget(cap, open_files, dns_connections)
        if cap < settings.api_max_connections:
            log.warning(
                "the open-files limit (%d) leaves room for %d API connections, fewer than "
                "api_max_connections (%d): raise LimitNOFILE (systemd) or ulimit -n",
                open_files,
                cap,
                settings.api_max_connections,
            )
    return ConnectionLimits(
        max_connections=cap,
        header_timeout=settings.api_header_timeout_seconds,
        max_head_bytes=settings.api_max_request_head_bytes,
    )


def uvicorn_config(
    app: ASGIApp,
    settings: Settings,
    host: str,
    port: int,
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        log_config=None,  # certok.logs formats uvicorn's lines like certok's own
        access_log=False,
        lifespan="off",
        http="httptools",  # certok.api.connections hardens uvicorn's httptools protocol
        ws="none",
        # uvicorn annotates int, but only hands the value to loop.call_later (seconds, any
        # float): a fractional setting works as documented.
        timeout_keep_alive=settings.api_keepalive_timeout_seconds,  # type: ignore[arg-type]
        backlog=BACKLOG,
        # uvicorn's defaults trust X-Forwarded-For from 127.0.0.1, i.e. from an nginx on the
        # same host that passes on whatever the client sent: any client could then pick its
        # own address (and its own bucket of the per-address limits). Only listed proxies'
        # headers count; given explicitly, uvicorn also ignores $FORWARDED_ALLOW_IPS.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or None,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def stop_on_signals(listeners: list[HttpListener]) -> None:
    def stop() -> None:
        log.info("stopping")
        for listener in listeners:
            listener.should_exit = True

    on_stop_signals(stop)


def on_stop_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def metrics_listeners(settings: Settings, store: Store, dns_server: Any) -> list[HttpListener]:
    """The /metrics listener (none unless metrics_port is set), with the DNS server's counts."""
    if not settings.metrics_port:
        return []
    add_scrape_source(dns_server.counts.families)
    page = MetricsPage(store.sessions, DATABASE_GAUGES)
    config = uvicorn_config(
        metrics_app(page), settings, settings.metrics_host, settings.metrics_port
    )
    # A scraper or two: a small cap of its own, never a share of the API's.
    guard = ConnectionGuard(
        ConnectionLimits(
            max_connections=METRICS_MAX_CONNECTIONS,
            header_timeout=settings.api_header_timeout_seconds,
            max_head_bytes=settings.api_max_request_head_bytes,
        )
    )
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return [HttpListener(config, guard)]
