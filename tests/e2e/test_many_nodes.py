"""Three certok nodes on three "hosts" (network namespaces with addresses of their own), one
PostgreSQL, and the resolver's delegation for certok's zone naming all three DNS servers.
Orders go to all three APIs; one node is killed (SIGKILL) mid-flight: the other two finish
its orders once its leases expire, no name gets a second certificate, no challenge material
is left, and the node comes back and takes part again.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from certok.orders.worker import LEASE_SECONDS
from tests.e2e.cluster import (
    DNS_PORT,
    MANY_ORDERS_SETTINGS,
    Cluster,
    KeptAliveUser,
    NodeServer,
    cluster,
    database_engine,
    scalar,
    slow_down_the_ca,
    stopped_after,
    wait_for,
    wait_until_settled,
)
from tests.e2e.flow import check_issued, delegation_lines, extra_hosts
from tests.rig import Rig

ORDERS = 200
NODES = 3
VICTIM = 1
ISSUER = "letsencrypt"


def ask_dns(address: str, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), want_dnssec=False)
    return dns.query.udp(query, address, port=DNS_PORT, timeout=2)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_three_nodes_lose_one_mid_flight_and_it_rejoins(cluster_rig: Rig, tmp_path: Path) -> None:
    rig = cluster_rig
    with cluster(rig, tmp_path, NODES) as (shared, _postgres):
        slow_down_the_ca(shared.proxy)
        nodes = [
            shared.node(i, tmp_path / f"node-{i}", settings=MANY_ORDERS_SETTINGS)
            for i in range(NODES)
        ]
        with stopped_after(nodes):
            _lose_one_node_and_rejoin(rig, shared, nodes, tmp_path)


def _lose_one_node_and_rejoin(
    rig: Rig, shared: Cluster, nodes: list[NodeServer], tmp_path: Path
) -> None:
    started = time.monotonic()
    # Schema once, before the nodes start (docs/deployment.md), then the nodes.
    nodes[0].cli("db", "upgrade")
    for node in nodes:
        node.start()
    rig.flush_resolver()
    token = nodes[0].create_tenant("acme-corp")
    users = [KeptAliveUser(node, token) for node in nodes]
    engine = database_engine(shared.database_url)

    names, hosts = extra_hosts(ORDERS)
    halves = [names[: ORDERS // 2], names[ORDERS // 2 :]]
    targets = [users[i].dv(",".join(half)) for i, half in enumerate(halves)]
    rig.set_customer_records(delegation_lines(*targets, extra=hosts))
    with ThreadPoolExecutor(6) as pool:
        codes = dict(
            zip(
                names,
                pool.map(lambda i: users[i % NODES].dv(names[i])["code"], range(ORDERS)),
                strict=True,
            )
        )
        # As a user would: a dv that did not see the CNAME yet (a resolver still holding the
        # answer from before the records changed, a lookup timed out on a loaded machine) is
        # asked again, for a while; every delegation must be seen in the end.
        deadline = time.monotonic() + 60
        while not all(codes.values()) and time.monotonic() < deadline:
            time.sleep(1)
            for i, name in enumerate(names):
                if not codes[name]:
                    codes[name] = users[i % NODES].dv(name)["code"]
        assert all(codes.values()), "a name's delegation was not seen"
        first = list(
            pool.map(
                lambda i: users[i % NODES].apply(codes[names[i]], issuer=ISSUER)["status"],
                range(ORDERS),
            )
        )
    assert collections.Counter(first) == {"pending": ORDERS}
    print(f"many nodes: {ORDERS} orders asked for after {time.monotonic() - started:.1f} s")

    # Mid-flight: the victim's worker holds orders while the others have finished some.
    victim = nodes[VICTIM]
    held = (
        "SELECT count(*) FROM orders WHERE state = 'pending' AND lease_until IS NOT NULL "
        "AND (lease_owner = :node OR lease_owner LIKE :node || '/%')"
    )
    victim_name = victim.env["CERTOK_NODE_NAME"]
    wait_for(
        lambda: (
            scalar(engine, held, node=victim_name) > 0
            and scalar(engine, "SELECT count(*) FROM orders WHERE state = 'issued'") > 0
        ),
        "the victim holding orders while others are issued",
        timeout=60,
    )
    victim.kill()
    killed_at = time.monotonic()
    orphans = scalar(engine, held, node=victim_name)
    issued_before = scalar(engine, "SELECT count(*) FROM orders WHERE state = 'issued'")
    print(f"many nodes: killed node {VICTIM} holding {orphans}, {issued_before} issued before")
    assert orphans > 0

    # The other two finish everything, the victim's orders once its leases run out.
    states = wait_until_settled(engine, list(codes.values()), timeout=LEASE_SECONDS + 150)
    print(f"many nodes: all settled {time.monotonic() - killed_at:.1f} s after the kill")
    assert collections.Counter(states.values()) == {"issued": ORDERS}, collections.Counter(
        states.values()
    )
    certificates = shared.proxy.issued_certificates()
    created = shared.proxy.created_orders()
    assert {names: count for names, count in certificates.items() if count != 1} == {}
    assert set(certificates) == {(name,) for name in names}
    # An ACME order is made again only when the victim died between the CA's answer and
    # saving it (its successor cannot know of it): one HTTP answer long, at most once a name.
    extra_orders = {name: created[(name,)] for name in names if created[(name,)] != 1}
    print(f"many nodes: names with more than one ACME order: {extra_orders}")
    assert all(count == 2 for count in extra_orders.values()), extra_orders
    assert len(extra_orders) <= orphans
    assert scalar(engine, "SELECT count(*) FROM challenge_records") == 0
    survivor = users[(VICTIM + 1) % NODES]
    check_issued(rig, survivor.apply(codes[names[0]]), [names[0]], "ECC", tmp_path)

    # The victim comes back on the same address: its DNS server answers for the zone and its
    # API takes an order that is issued.
    victim.start()
    rig.flush_resolver()
    soa = ask_dns(victim.host, rig.certok_zone, "SOA")
    assert soa.answer and soa.flags & dns.flags.AA, soa
    returning = users[VICTIM]
    name = "back.customer.test"
    rig.set_customer_records(
        delegation_lines(*targets, returning.dv(name), extra=[*hosts, "back IN A 127.0.0.1"])
    )
    code = returning.dv(name)["code"]
    assert code
    assert returning.apply(code, issuer=ISSUER)["status"] == "pending"
    data = returning.apply_until_done(code, timeout=60)
    check_issued(rig, data, [name], "ECC", tmp_path)
    print(f"many nodes: whole run {time.monotonic() - started:.1f} s")
    engine.dispose()
