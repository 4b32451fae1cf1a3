"""Whose address a request counts against: the real app behind the real uvicorn listeners that
`certok serve` builds (`certok/http_listeners.py`), HTTP and HTTPS, on loopback ports of their own.

The limit on token lookups (`rate_limit_unverified_tokens_per_minute`) is kept per client
address. nginx on the same host connects from 127.0.0.1 and passes on any X-Forwarded-For the
client sent, so trusting that header by default would let every request choose a fresh bucket.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from certok import http_listeners
from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters
from certok.assembly import build_api_services, build_checks
from certok.persistence import open_store
from certok.settings import Settings
from tests.functional.test_api import assert_error
from tests.rig.tls import write_server_tls

LIMIT = 2
STARTUP_SECONDS = 5.0
BAD_TOKEN = {"httpsok-token": "0" * 32}  # well-formed, unknown: a lookup the limit counts


@contextmanager
def serving(tmp_path: Path, **settings: Any) -> Iterator[dict[str, httpx.Client]]:
    """Clients for the HTTP and the HTTPS listener of one app, as `serve` starts them."""
    tls = write_server_tls(tmp_path / "tls")
    config = Settings(
        data_dir=tmp_path / "data",
        api_port=0,  # the kernel picks free ports: read back from the listeners below
        https_port=0,
        tls_cert_file=tls.certificate,
        tls_key_file=tls.private_key,
        resolvers=["127.0.0.1:9"],  # nothing answers; these requests never resolve anything
        rate_limit_unverified_tokens_per_minute=LIMIT,
        log_level="WARNING",
        **settings,
    )
    store = open_store(config)
    checks = build_checks(config, store)
    app = create_app(
        build_api_services(config, store, checks, waiters=OrderWaiters(), wake_worker=lambda: None)
    )
    listeners = http_listeners.api_listeners(app, config)

    async def serve_all() -> None:
        await asyncio.gather(*(listener.serve() for listener in listeners))

    thread = threading.Thread(target=asyncio.run, args=(serve_all(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not all(listener.started for listener in listeners):
            assert thread.is_alive() and time.monotonic() < deadline, "listeners did not start"
            time.sleep(0.01)
        http, https = (listener.servers[0].sockets[0].getsockname()[1] for listener in listeners)
        trust = ssl.create_default_context(cafile=str(tls.ca_bundle))
        # trust_env off: a developer's HTTP(S)_PROXY must not carry these requests elsewhere.
        plain = httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=5, trust_env=False)
        secure = httpx.Client(
            base_url=f"https://127.0.0.1:{https}", verify=trust, timeout=5, trust_env=False
        )
        with plain, secure:
            yield {"http": plain, "https": secure}
    finally:
        for listener in listeners:
            listener.should_exit = True
        thread.join(STARTUP_SECONDS)
        checks.close()
        store.engine.dispose()


def lookup(client: httpx.Client, forwarded_for: str) -> httpx.Response:
    return client.get("/v1/cert/dv", headers={**BAD_TOKEN, "X-Forwarded-For": forwarded_for})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_by_default_a_forwarded_for_header_does_not_choose_the_bucket(
    tmp_path: Path, scheme: str
) -> None:
    with serving(tmp_path) as clients:
        client = clients[scheme]
        for spoofed in ("203.0.113.1", "203.0.113.2"):
            assert_error(lookup(client, spoofed), 401, "invalid or revoked")
        # A third made-up address still draws from the TCP peer's bucket, now empty.
        assert_error(lookup(client, "203.0.113.3"), 429, "from 127.0.0.1 ", "retry in")


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_behind_trusted_proxies_the_address_they_appended_is_the_client(
    tmp_path: Path, scheme: str
) -> None:
    # nginx on this host (127.0.0.1) behind a load balancer in 10.0.0.0/8: the client is the
    # right-most address neither of them is.
    with serving(tmp_path, trusted_proxies=["127.0.0.1", "10.0.0.0/8"]) as clients:
        client = clients[scheme]
        for _ in range(LIMIT):
            assert_error(lookup(client, "198.51.100.7"), 401, "invalid or revoked")
        # Another client behind the same proxy has a bucket of its own...
        assert_error(lookup(client, "203.0.113.9"), 401, "invalid or revoked")
        # ...but the first cannot get one by putting a made-up address in front of the one the
        # proxies appended, directly or through the load balancer.
        for chain in ("9.9.9.9, 198.51.100.7", "9.9.9.9, 198.51.100.7, 10.1.2.3"):
            assert_error(lookup(client, chain), 429, "from 198.51.100.7 ", "retry in")
