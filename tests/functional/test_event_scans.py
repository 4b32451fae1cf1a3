"""The scans that find events nobody's request causes: renewal_due, expiring (thresholds
scaled to the lifetime), revoked, each once per certificate; delegation.broken against a
real DNS server on loopback, once per break, each delegation's re-check claimed by one node
and spread over the interval. Injected clock and randomness; certificates inserted directly."""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import event, insert, select, update

from certok.db.engine import transaction
from certok.db.models import Certificate, CertificateName, Delegation, WebhookDelivery
from certok.db.writes import write
from certok.events import delegation_rechecks as rechecks
from certok.events.scans import EventScanner, crossed_threshold, expiry_thresholds
from certok.persistence import Store
from certok.prechecks.resolver import make_blocking_resolver
from certok.tenants import service as tenants
from tests.functional.dnsfake_server import FakeNameserver
from tests.functional.test_webhook_delivery import Clock
from tests.kit.dns import CERTOK_ZONE

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
INTERVAL = dt.timedelta(seconds=60)  # the scanners' delegation_recheck_seconds


class NoSpread(random.Random):
    """Every draw 0: a new delegation's first check is at once and each next one exactly an
    interval later, so a test of outcomes rechecks every delegation on each interval."""

    def random(self) -> float:
        return 0.0


def test_thresholds_scale_with_the_lifetime() -> None:
    def remaining(days: float) -> list[float]:
        return [
            t.remaining.total_seconds() / 86400
            for t in expiry_thresholds(T0, T0 + dt.timedelta(days=days))
        ]

    assert remaining(90) == [14, 3]  # capped: 15 and 3 days
    assert remaining(45) == [7.5, 1.5]
    assert remaining(160 / 24) == pytest.approx([160 / 24 / 6, 160 / 24 / 30])
    assert remaining(398) == [14, 3]
    not_after = T0 + 45 * DAY
    assert crossed_threshold(T0, not_after, not_after - 8 * DAY) is None
    assert crossed_threshold(T0, not_after, not_after - 7 * DAY).name == "first"  # type: ignore[union-attr]
    assert crossed_threshold(T0, not_after, not_after - DAY).name == "final"  # type: ignore[union-attr]


class World:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = Clock(T0)
        with transaction(store.sessions) as session:
            self.tenant = tenants.create_tenant(session, "alpha").id
        self.scanner = EventScanner(
            store.sessions,
            zone=CERTOK_ZONE,
            resolver=make_blocking_resolver(["127.0.0.1:9"], 0.3),
            certificate_seconds=60,
            delegation_seconds=INTERVAL.total_seconds(),
            clock=self.clock,
            rng=NoSpread(),
        )

    def certificate(
        self,
        days: float,
        renew_fraction: float = 2 / 3,
        names: tuple[str, ...] = ("www.customer.test", "customer.test"),
        tenant: int | None = None,
        **values: object,
    ) -> int:
        """A certificate record with its names, as the issuing save writes them."""
        not_after = T0 + dt.timedelta(days=days)
        tenant_id = self.tenant if tenant is None else tenant
        with transaction(self.store.sessions) as session:
            certificate_id: int = session.execute(
                insert(Certificate.__table__)
                .values(
                    tenant_id=tenant_id,
                    domains=",".join(names),
                    issuer="letsencrypt",
                    serial="0a1b",
                    not_before=T0,
                    not_after=not_after,
                    key_type="ECC",
                    order_id=1,
                    renew_at=T0 + (not_after - T0) * renew_fraction,
                    ari=False,
                    created_at=T0,
                    **values,
                )
                .returning(Certificate.__table__.c.id)
            ).scalar_one()
            session.execute(
                insert(CertificateName.__table__),
                [
                    {"certificate_id": certificate_id, "tenant_id": tenant_id, "name": name}
                    for name in names
                ],
            )
            return certificate_id

    def events(self) -> list[tuple[str, dict[str, object]]]:
        with self.store.sessions() as session:
            rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
            return [(r.event_type, json.loads(r.payload)["data"]) for r in rows]

    def at(self, moment: dt.datetime) -> int:
        self.clock.now = moment
        return self.scanner.certificate_events()

    def recheck(self) -> int:
        """The delegation pass one interval on: every delegation in use is due again."""
        self.clock.now += INTERVAL
        return self.scanner.delegation_events()

    def delegations(self, *base_names: str) -> list[int]:
        with transaction(self.store.sessions) as session:
            rows = [
                Delegation(tenant_id=self.tenant, base_name=name, label=f"l{n}", created_at=T0)
                for n, name in enumerate(base_names)
            ]
            session.add_all(rows)
            session.flush()
            return [row.id for row in rows]

    def next_checks(self) -> dict[str, dt.datetime | None]:
        with self.store.sessions() as session:
            return dict(
                session.execute(select(Delegation.base_name, Delegation.next_check_at)).all()
            )


@pytest.fixture
def world(store: Store) -> Iterator[World]:
    world = World(store)
    # Events are queued for the tenant's endpoints: give it one.
    from tests.functional.test_webhook_delivery import Setup
    from tests.functional.webhook_receiver import Receiver

    receiver = Receiver()
    Setup(store, receiver, world.clock, world.tenant).endpoint()
    yield world
    receiver.close()


def test_renewal_due_and_expiring_are_each_sent_once(world: World) -> None:
    cert = world.certificate(45)
    assert world.at(T0 + 29 * DAY) == 0  # renew_at is day 30
    assert world.at(T0 + 30 * DAY) == 1
    assert world.at(T0 + 31 * DAY) == 0  # once
    assert world.at(T0 + 37 * DAY + dt.timedelta(hours=12)) == 1  # 7.5 days left: first
    assert world.at(T0 + 40 * DAY) == 0
    assert world.at(T0 + 43 * DAY + dt.timedelta(hours=12)) == 1  # 1.5 days left: final
    assert world.at(T0 + 44 * DAY) == 0
    assert world.at(T0 + 46 * DAY) == 0  # expired: nothing more
    kinds = [(kind, data.get("threshold")) for kind, data in world.events()]
    assert kinds == [
        ("certificate.renewal_due", None),
        ("certificate.expiring", "first"),
        ("certificate.expiring", "final"),
    ]
    assert all(data["certificateId"] == cert for _, data in world.events())


def test_a_late_scan_sends_the_final_notice_only(world: World) -> None:
    world.certificate(90, renew_fraction=0.99)
    assert world.at(T0 + 88 * DAY) == 1
    [(kind, data)] = world.events()
    assert (kind, data["threshold"]) == ("certificate.expiring", "final")
    assert world.at(T0 + 89 * DAY) == 0


def test_replaced_and_revoked_certificates_are_not_due_or_expiring(world: World) -> None:
    world.certificate(45, replaced_by_id=99)
    revoked = world.certificate(45)
    with transaction(world.store.sessions) as session:
        session.execute(
            update(Certificate.__table__)
            .where(Certificate.__table__.c.id == revoked)
            .values(revoked_at=T0 + DAY, revoke_reason=1)
        )
    assert world.at(T0 + 2 * DAY) == 1
    assert world.at(T0 + 44 * DAY) == 0
    [(kind, data)] = world.events()
    assert kind == "certificate.revoked"
    assert data["certificateId"] == revoked and data["reason"] == 1


def test_the_scan_reads_only_rows_near_their_moment(world: World) -> None:
    """Ten thousand certificates far from renewal cost the scan no work worth the name."""
    with transaction(world.store.sessions) as session:
        session.execute(
            insert(Certificate.__table__),
            [
                {
                    "tenant_id": world.tenant,
                    "domains": f"n{i}.customer.test",
                    "issuer": "letsencrypt",
                    "serial": f"{i:x}",
                    "not_before": T0,
                    "not_after": T0 + 90 * DAY,
                    "key_type": "ECC",
                    "order_id": i,
                    "key_encrypted": b"x",
                    "certificate_pem": "-",
                    "renew_at": T0 + 60 * DAY,
                    "ari": False,
                    "created_at": T0,
                }
                for i in range(10_000)
            ],
        )
    if world.store.engine.dialect.name != "sqlite":
        pytest.skip("the query plans are read from SQLite's EXPLAIN QUERY PLAN")
    statements: list[tuple[str, object]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM certificates" in statement:
            statements.append((statement, parameters))

    event.listen(world.store.engine, "before_cursor_execute", seen)
    try:
        assert world.at(T0 + DAY) == 0
    finally:
        event.remove(world.store.engine, "before_cursor_execute", seen)
    assert len(statements) == 3  # renewal due, expiring, revoked
    with world.store.engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement,
                parameters,  # type: ignore[arg-type]
            ).all()
            text = " ".join(str(row[-1]) for row in plan)
            assert "USING INDEX" in text and "SCAN certificates" not in text, text
            # "revoked_at IS NULL" holds for every live certificate: through its index a
            # scan walked all of them (at a million, a second of CPU per scan).
            assert "ix_certificates_revoked_at (revoked_at=?)" not in text, text


def test_delegation_broken_once_per_break(world: World) -> None:
    world.certificate(45)
    with transaction(world.store.sessions) as session:
        session.add(
            Delegation(
                tenant_id=world.tenant, base_name="customer.test", label="lbl1", created_at=T0
            )
        )
    with FakeNameserver(
        zones=["customer.test", CERTOK_ZONE],
        cnames={"_acme-challenge.customer.test": f"lbl1.{CERTOK_ZONE}"},
        existing=[f"lbl1.{CERTOK_ZONE}"],
    ) as dns_server:
        world.scanner._delegations._resolver = make_blocking_resolver(
            [f"127.0.0.1:{dns_server.port}"], 2.0
        )
        world.clock.now = T0 + DAY
        assert world.scanner.delegation_events() == 0  # in place
        dns_server.add_cname("_acme-challenge.customer.test", "somewhere.customer.test")
        assert world.scanner.delegation_events() == 0  # checked this interval already
        assert world.recheck() == 1
        assert world.recheck() == 0  # once per break
        dns_server.add_cname("_acme-challenge.customer.test", f"lbl1.{CERTOK_ZONE}")
        assert world.recheck() == 0  # fixed: the mark goes
        dns_server.add_cname("_acme-challenge.customer.test", "elsewhere.customer.test")
        assert world.recheck() == 1  # a new break is news again
    events = [data for kind, data in world.events() if kind == "delegation.broken"]
    assert len(events) == 2
    assert events[0]["domain"] == "customer.test"
    assert events[0]["found"] == "somewhere.customer.test"
    assert events[0]["expected"] == f"lbl1.{CERTOK_ZONE}"


def test_a_failed_lookup_is_not_a_broken_delegation(world: World) -> None:
    world.certificate(45)
    with transaction(world.store.sessions) as session:
        session.add(
            Delegation(tenant_id=world.tenant, base_name="customer.test", label="l", created_at=T0)
        )
    # Nothing answers on port 9: every lookup times out.
    assert world.scanner.delegation_events() == 0
    assert world.events() == []


def test_a_backlog_beyond_one_batch_is_worked_through_in_turn(world: World) -> None:
    """More certificates due than one scan takes: each scan takes the next ones, never the
    ones already told (a scan reads what is newly due, not the whole window again)."""
    batch = 4
    world.scanner._batch = batch
    ids = [world.certificate(45) for _ in range(batch * 2 + 1)]
    assert [world.at(T0 + 30 * DAY) for _ in range(4)] == [batch, batch, 1, 0]
    told = [data["certificateId"] for kind, data in world.events()]
    assert sorted(told) == sorted(ids) and len(set(told)) == len(ids)


def test_only_delegations_of_names_with_a_live_certificate_are_rechecked(world: World) -> None:
    """The database picks the delegations to re-check: a live certificate of the tenant's for
    the name or its wildcard; not an expired, revoked or replaced one, nor another tenant's."""
    with transaction(world.store.sessions) as session:
        beta = tenants.create_tenant(session, "beta").id
    cases = {  # base name -> the certificate it has, if any
        "plain.test": {"names": ("plain.test",)},
        "wild.test": {"names": ("*.wild.test",)},
        "expired.test": {"names": ("expired.test",), "days": -1},
        "revoked.test": {"names": ("revoked.test",), "revoked_at": T0},
        "replaced.test": {"names": ("replaced.test",), "replaced_by_id": 99},
        "foreign.test": {"names": ("foreign.test",), "tenant": beta},
        "none.test": None,
        "sub.wild.test": None,  # *.wild.test covers its names, not its own delegation
    }
    with transaction(world.store.sessions) as session:
        for number, base_name in enumerate(cases):
            session.add(
                Delegation(
                    tenant_id=world.tenant, base_name=base_name, label=f"l{number}", created_at=T0
                )
            )
    for certificate in filter(None, cases.values()):
        world.certificate(**{"days": 45, **certificate})  # type: ignore[arg-type]
    checked: list[str] = []
    world.scanner._delegations._recheck = lambda delegation: (
        checked.append(delegation.base_name) or 0
    )  # type: ignore[method-assign]
    world.clock.now = T0 + DAY
    assert world.scanner.delegation_events() == 0
    assert sorted(checked) == ["plain.test", "wild.test"]


def test_the_delegation_scan_reads_by_index_in_batches(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per delegation, a look-up of the certificates' names by tenant and name; the
    delegations come in batches, so a node holds one batch however many there are."""
    monkeypatch.setattr(rechecks, "_DELEGATION_BATCH", 3)
    monkeypatch.setattr(rechecks, "_DUE_DELEGATIONS", rechecks._DUE_DELEGATIONS.limit(3))
    monkeypatch.setattr(rechecks, "_UNSCHEDULED", rechecks._UNSCHEDULED.limit(3))
    with transaction(world.store.sessions) as session:
        for number in range(7):
            session.add(
                Delegation(
                    tenant_id=world.tenant,
                    base_name=f"n{number}.test",
                    label=f"l{number}",
                    created_at=T0,
                )
            )
    world.certificate(45, names=tuple(f"n{number}.test" for number in range(7)))
    statements: list[tuple[str, object]] = []

    def seen(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if "FROM delegations" in statement and "in_use" in statement:
            statements.append((statement, parameters))

    checked: list[str] = []
    world.scanner._delegations._recheck = lambda delegation: (
        checked.append(delegation.base_name) or 0
    )  # type: ignore[method-assign]
    world.clock.now = T0 + DAY
    event.listen(world.store.engine, "before_cursor_execute", seen)
    try:
        world.scanner.delegation_events()
    finally:
        event.remove(world.store.engine, "before_cursor_execute", seen)
    assert checked == [f"n{number}.test" for number in range(7)]
    assert len(statements) == 3  # 3 + 3 + 1
    if world.store.engine.dialect.name != "sqlite":
        return
    with world.store.engine.connect() as connection:
        statement, parameters = statements[0]
        plan = connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + statement,
            parameters,  # type: ignore[arg-type]
        ).all()
    text = " ".join(str(row[-1]) for row in plan)
    assert "ix_certificate_names_tenant_id_name" in text, text
    assert "ix_delegations_next_check_at" in text and "SCAN delegations" not in text, text
    assert "SCAN certificate_names" not in text and "SCAN certificates" not in text, text


def test_a_delegation_found_in_place_costs_no_write_but_its_claim(world: World) -> None:
    world.certificate(45)
    with transaction(world.store.sessions) as session:
        session.add(
            Delegation(tenant_id=world.tenant, base_name="customer.test", label="l1", created_at=T0)
        )
    writes: list[str] = []

    def seen(_conn, _cursor, statement: str, *_args: object) -> None:  # type: ignore[no-untyped-def]
        if not statement.lstrip().upper().startswith("SELECT"):
            writes.append(statement)

    with FakeNameserver(
        zones=["customer.test", CERTOK_ZONE],
        cnames={"_acme-challenge.customer.test": f"l1.{CERTOK_ZONE}"},
        existing=[f"l1.{CERTOK_ZONE}"],
    ) as dns_server:
        world.scanner._delegations._resolver = make_blocking_resolver(
            [f"127.0.0.1:{dns_server.port}"], 2.0
        )
        world.clock.now = T0 + DAY
        world.scanner.delegation_events()  # its first check time, and the first check
        event.listen(world.store.engine, "before_cursor_execute", seen)
        try:
            assert world.recheck() == 0
        finally:
            event.remove(world.store.engine, "before_cursor_execute", seen)
        assert dns_server.queries_for("_acme-challenge.customer.test") == ["CNAME"] * 2
    # The claim only: one UPDATE of next_check_at, no mark, no event.
    assert len(writes) == 1, writes
    assert writes[0].startswith("UPDATE delegations SET next_check_at="), writes


class Nodes:
    """Two event scanners ("nodes") on one database and one clock, each with randomness of its
    own, re-checking against one DNS server that logs every query it gets."""

    def __init__(self, world: World, dns_server: FakeNameserver) -> None:
        self.world = world
        self.dns_server = dns_server
        resolver = make_blocking_resolver([f"127.0.0.1:{dns_server.port}"], 2.0)
        self.scanners = [
            EventScanner(
                world.store.sessions,
                zone=CERTOK_ZONE,
                resolver=resolver,
                certificate_seconds=60,
                delegation_seconds=INTERVAL.total_seconds(),
                clock=world.clock,
                rng=random.Random(seed),
            )
            for seed in (1, 2)
        ]
        self.by_node = [0, 0]

    def passes(self, first: int = 0) -> None:
        """Each node's delegation pass, `first` one first."""
        for node in (first, 1 - first):
            before = len(self.dns_server.queries)
            self.scanners[node].delegation_events()
            self.by_node[node] += len(self.dns_server.queries) - before

    def lookups(self) -> Counter[str]:
        return Counter(name for name, qtype in self.dns_server.queries if qtype == "CNAME")


def _in_use(world: World, count: int) -> list[str]:
    names = [f"n{number}.customer.test" for number in range(count)]
    world.delegations(*names, "idle.customer.test")  # idle: no certificate
    world.certificate(45, names=tuple(names))
    return names


def _in_place(names: list[str]) -> dict[str, str]:
    return {f"_acme-challenge.{name}": f"l{n}.{CERTOK_ZONE}" for n, name in enumerate(names)}


def test_two_nodes_look_each_delegation_up_once_per_interval(world: World) -> None:
    """Two nodes pass every twentieth of the interval: each delegation in use is looked up by
    one of them, once; one interval later it is due again; one not in use never is."""
    names = _in_use(world, 12)
    labels = [f"l{n}.{CERTOK_ZONE}" for n in range(len(names) + 1)]
    with FakeNameserver(
        zones=["customer.test", CERTOK_ZONE], cnames=_in_place(names), existing=labels
    ) as dns_server:
        nodes = Nodes(world, dns_server)
        steps = 20
        for step in range(steps + 1):  # from T0 to T0 + one interval, both ends included
            world.clock.now = T0 + INTERVAL * step / steps
            nodes.passes(first=step % 2)
        assert nodes.lookups() == Counter(f"_acme-challenge.{name}" for name in names)
        assert all(nodes.by_node), nodes.by_node  # the checks are shared out, not repeated
        # Claimed up to a tenth of an interval later than one interval on: due again after it.
        world.clock.now = T0 + INTERVAL * (2 + rechecks.RECHECK_JITTER) + INTERVAL / steps
        nodes.passes()
        assert nodes.lookups() == Counter(f"_acme-challenge.{name}" for name in names * 2)
        # The idle one is claimed like the others (a pass does not read it again), unchecked.
        assert world.next_checks()["idle.customer.test"] > world.clock.now  # type: ignore[operator]
        assert dns_server.queries_for("_acme-challenge.idle.customer.test") == []


def test_the_first_pass_after_start_spreads_the_checks_over_the_interval(world: World) -> None:
    """Delegations never scheduled (all of them, right after the upgrade) are not looked up at
    once: each gets a first check at a random moment within the interval."""
    names = _in_use(world, 200)
    assert set(world.next_checks().values()) == {None}
    with FakeNameserver(
        zones=["customer.test", CERTOK_ZONE],
        cnames=_in_place(names),
        existing=[f"l{n}.{CERTOK_ZONE}" for n in range(len(names) + 1)],
    ) as dns_server:
        nodes = Nodes(world, dns_server)
        world.clock.now = T0
        nodes.passes()
        started = nodes.lookups()
        first = [at for at in world.next_checks().values() if at is not None]
        assert len(first) == len(names) + 1
        assert all(T0 <= at < T0 + INTERVAL for at in first), first
        tenths = Counter(int((at - T0) / INTERVAL * 10) for at in first)
        assert sorted(tenths) == list(range(10)) and max(tenths.values()) < 40, tenths
        assert sum(started.values()) <= 2  # only those drawn due at once, not a burst
        world.clock.now = T0 + INTERVAL
        nodes.passes()
    assert nodes.lookups() == Counter(f"_acme-challenge.{name}" for name in names)


def test_a_delegation_another_node_claimed_is_not_claimed_again(world: World) -> None:
    """The compare-and-set: a node that read a batch of due delegations claims none of them if
    another node claimed them between its read and its claim."""
    world.certificate(45)
    [delegation] = world.delegations("customer.test")
    world.clock.now = T0 + DAY
    with world.store.sessions() as session:  # "node one" reads: never scheduled
        assert session.get(Delegation, delegation).next_check_at is None  # type: ignore[union-attr]
    world.scanner._delegations._recheck = lambda delegation: 0  # type: ignore[method-assign]
    world.scanner.delegation_events()  # "node two" schedules, claims and checks it
    claimed_by_two = world.next_checks()["customer.test"]
    assert claimed_by_two == T0 + DAY + INTERVAL
    mine = T0 + DAY + INTERVAL * 1.05
    claim = functools.partial(rechecks.claim_job, due=T0 + DAY, times=[(delegation, mine)])
    assert write(world.store.sessions, claim) == []
    assert world.next_checks()["customer.test"] == claimed_by_two
    world.clock.now = T0 + DAY + INTERVAL
    claim = functools.partial(rechecks.claim_job, due=world.clock.now, times=[(delegation, mine)])
    assert write(world.store.sessions, claim) == [delegation]  # due again: claimed
    assert world.next_checks()["customer.test"] == mine
