"""Two nodes on one database: what one writes, the other's DNS server answers within 1 s.

Several certok nodes may share one PostgreSQL (SQLite: several processes on one file). Each
node's DNS server answers from memory and reloads on a timer (`dns_refresh_seconds`, 0.5 s by
default), so a TXT value written by a worker on node A must be served by node B's DNS server
within a second, and stop being served as soon when it is removed: the CA may ask any node.
Here node A writes rows through its own engine, node B runs the real DNS server over its own
engine with the default refresh interval, and a client asks B over UDP.

The second is the default interval plus one reload, so the tests check the two parts apart,
neither against the wall clock (a busy machine may delay a reload past any narrow window): the
first reload B starts after A's commit serves the change, and reloads start every
`dns_refresh_seconds`, which leaves half the second for the reload itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
from tests.kit.dns import CERTOK_ZONE
from tests.kit.loop import LoopThread
from tests.kit.rows import make_zone
from tests.kit.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = ZoneConfig(
    zone=CERTOK_ZONE, nameservers=(f"ns1.{CERTOK_ZONE}",), nameserver_addresses=(), ttl=5
)
HOST = "127.0.0.1"
# The contract (issue: "refreshed within 1 s of a change in the database"), with the
# refresh interval users get by default.
FRESH_WITHIN_SECONDS = 1.0
# How long a test waits for a reload at most: only a failing test waits that long.
RELOAD_DEADLINE_SECONDS = 30.0
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


@dataclass
class NodeB:
    port: int  # its DNS server's (UDP)
    cache: ZoneCache

    def after_the_next_reload(self) -> None:
        """Return once a reload that started after this call has been swapped in."""
        with self.cache._progress:
            first_after_now = self.cache._started + 1
        assert wait_until(
            lambda: self.cache._completed >= first_after_now, RELOAD_DEADLINE_SECONDS
        ), "node B did not reload"


@pytest.fixture
def node_b(database_url: str, loop_thread: LoopThread) -> Iterator[NodeB]:
    """Node B's DNS server, refreshing on the default interval."""
    with node_sessions(database_url) as sessions:
        cache = ZoneCache(sessions)
        cache.refresh()
        server = loop_thread.run(start_dns_server(HOST, 0, CONFIG, cache))
        interval = Settings().dns_refresh_seconds
        refresher = asyncio.run_coroutine_threadsafe(
            cache.run_refresher(interval), loop_thread.loop
        )
        try:
            yield NodeB(server.port, cache)
        finally:
            refresher.cancel()
            loop_thread.run(server.close())


def txt_values(port: int, name: str) -> set[str]:
    query = dns.message.make_query(name, "TXT")
    reply = dns.query.udp(query, HOST, port=port, timeout=2.0)
    assert reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    return {b"".join(record.strings).decode() for rrset in reply.answer for record in rrset}


def test_the_default_interval_leaves_half_the_second_for_the_reload() -> None:
    assert Settings().dns_refresh_seconds <= FRESH_WITHIN_SECONDS / 2


def test_a_value_written_on_one_node_is_served_by_another_after_its_next_reload(
    node_a: sessionmaker[Session], node_b: NodeB
) -> None:
    zone = make_zone(node_a)
    label = "0123456789abcdef"
    zone.delegate(label, "customer.test")
    name = f"{label}.{CERTOK_ZONE}"
    for change in range(CHANGES):
        value = f"value-{change}"
        zone.present(label, value)  # committed here
        node_b.after_the_next_reload()
        assert value in txt_values(node_b.port, name)
        zone.clean_up(label)
        node_b.after_the_next_reload()
        assert value not in txt_values(node_b.port, name)


def test_a_new_delegation_on_one_node_answers_on_another_after_its_next_reload(
    node_a: sessionmaker[Session], node_b: NodeB
) -> None:
    zone = make_zone(node_a)
    label = "fedcba9876543210"
    name = f"{label}.{CERTOK_ZONE}"
    query = dns.message.make_query(name, "TXT")
    assert dns.query.udp(query, HOST, port=node_b.port, timeout=2.0).rcode() == dns.rcode.NXDOMAIN
    zone.delegate(label, "customer.test")
    node_b.after_the_next_reload()
    # An allocated label without values answers NODATA, not NXDOMAIN: the name exists.
    assert dns.query.udp(query, HOST, port=node_b.port, timeout=2.0).rcode() == dns.rcode.NOERROR
