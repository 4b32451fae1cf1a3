"""Two nodes on one database: what one writes, the other's DNS server answers within 1 s.

Several certok nodes may share one PostgreSQL (SQLite: several processes on one file). Each
node's DNS server answers from memory and reloads on a timer (`dns_refresh_seconds`, 0.5 s by
default), so a TXT value written by a worker on node A must be served by node B's DNS server
within a second, and stop being served as soon when it is removed: the CA may ask any node.
Here node A writes rows through its own engine, node B runs the real DNS server over its own
engine with the default refresh interval, and a client asks B over UDP until it sees the change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dns.message
import dns.query
import dns.rcode
import pytest
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import make_engine
from certok.db.sessions import make_session_factory
from certok.dnszone.answer import ZoneConfig
from certok.dnszone.server import start_dns_server
from certok.dnszone.zone_cache import ZoneCache
from certok.settings import Settings
from tests.functional.conftest import LoopThread, make_zone

pytestmark = pytest.mark.timeout(120)

ZONE = "acme.svc.test"
CONFIG = ZoneConfig(zone=ZONE, nameservers=(f"ns1.{ZONE}",), nameserver_addresses=(), ttl=5)
HOST = "127.0.0.1"
# The contract (issue: "refreshed within 1 s of a change in the database"), with the
# refresh interval users get by default.
FRESH_WITHIN_SECONDS = 1.0
CHANGES = 5


@contextmanager
def node_sessions(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an engine of its own, as a separate certok node would have."""
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def node_a(database_url: str) -> Iterator[sessionmaker[Session]]:
    with node_sessions(database_url) as sessions:
        yield sessions


@pytest.fixture
def node_b_port(database_url: str, loop_thread: LoopThread) -> Iterator[int]:
    """Node B's DNS server (UDP port), refreshing on the default interval."""
    with node_sessions(database_url) as sessions:
        cache = ZoneCache(sessions)
        cache.refresh()
        server = loop_thread.run(start_dns_server(HOST, 0, CONFIG, cache))
        interval = Settings().dns_refresh_seconds
        refresher = asyncio.run_coroutine_threadsafe(
            cache.run_refresher(interval), loop_thread.loop
        )
        try:
            yield server.port
        finally:
            refresher.cancel()
            loop_thread.run(server.close())


def txt_values(port: int, name: str) -> set[str]:
    query = dns.message.make_query(name, "TXT")
    reply = dns.query.udp(query, HOST, port=port, timeout=2.0)
    assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    return {b"".join(record.strings).decode() for rrset in reply.answer for record in rrset}


def seconds_until(port: int, name: str, served: bool, value: str) -> float:
    """Seconds from now until ``value`` is (or is no longer) in node B's answer at ``name``."""
    started = time.monotonic()
    while (value in txt_values(port, name)) != served:
        if time.monotonic() - started > 10:
            pytest.fail(f"node B did not {'start' if served else 'stop'} serving {value!r}")
        time.sleep(0.005)
    return time.monotonic() - started


def test_a_value_written_on_one_node_is_served_by_another_within_a_second(
    node_a: sessionmaker[Session], node_b_port: int
) -> None:
    zone = make_zone(node_a)
    label = "0123456789abcdef"
    zone.delegate(label, "customer.test")
    name = f"{label}.{ZONE}"
    delays: list[float] = []
    for change in range(CHANGES):
        value = f"value-{change}"
        zone.present(label, value)  # committed here
        delays.append(seconds_until(node_b_port, name, served=True, value=value))
        zone.clean_up(label)
        delays.append(seconds_until(node_b_port, name, served=False, value=value))
    assert max(delays) < FRESH_WITHIN_SECONDS, [round(d, 3) for d in delays]


def test_a_new_delegation_on_one_node_answers_on_another_within_a_second(
    node_a: sessionmaker[Session], node_b_port: int
) -> None:
    zone = make_zone(node_a)
    label = "fedcba9876543210"
    name = f"{label}.{ZONE}"
    query = dns.message.make_query(name, "TXT")
    assert dns.query.udp(query, HOST, port=node_b_port, timeout=2.0).rcode() == dns.rcode.NXDOMAIN
    zone.delegate(label, "customer.test")
    started = time.monotonic()
    # An allocated label without values answers NODATA, not NXDOMAIN (REFERENCE.md).
    while dns.query.udp(query, HOST, port=node_b_port, timeout=2.0).rcode() != dns.rcode.NOERROR:
        assert time.monotonic() - started < 10, "node B never saw the delegation"
        time.sleep(0.005)
    assert time.monotonic() - started < FRESH_WITHIN_SECONDS
