"""The scans that find events nobody's request causes: renewal_due, expiring (thresholds
scaled to the lifetime), revoked, each once per certificate; delegation.broken against a
real DNS server on loopback, once per break. Injected clock; certificates inserted directly."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import event, insert, select, update

from certok.db.engine import transaction
from certok.db.models import Certificate, Delegation, WebhookDelivery
from certok.events.scans import EventScanner, crossed_threshold, expiry_thresholds
from certok.persistence import Store
from certok.prechecks.resolver import make_blocking_resolver
from certok.tenants import service as tenants
from tests.functional.dnsfake_server import FakeNameserver
from tests.functional.test_webhook_delivery import Clock
from tests.kit.dns import CERTOK_ZONE

T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


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
            delegation_seconds=60,
            clock=self.clock,
        )

    def certificate(self, days: float, renew_fraction: float = 2 / 3, **values: object) -> int:
        not_after = T0 + dt.timedelta(days=days)
        with transaction(self.store.sessions) as session:
            return session.execute(
                insert(Certificate.__table__)
                .values(
                    tenant_id=self.tenant,
                    domains="www.customer.test,customer.test",
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

    def events(self) -> list[tuple[str, dict[str, object]]]:
        with self.store.sessions() as session:
            rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
            return [(r.event_type, json.loads(r.payload)["data"]) for r in rows]

    def at(self, moment: dt.datetime) -> int:
        self.clock.now = moment
        return self.scanner.certificate_events()


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
        world.scanner._resolver = make_blocking_resolver([f"127.0.0.1:{dns_server.port}"], 2.0)
        world.clock.now = T0 + DAY
        assert world.scanner.delegation_events() == 0  # in place
        dns_server.add_cname("_acme-challenge.customer.test", "somewhere.customer.test")
        assert world.scanner.delegation_events() == 1
        assert world.scanner.delegation_events() == 0  # once per break
        dns_server.add_cname("_acme-challenge.customer.test", f"lbl1.{CERTOK_ZONE}")
        assert world.scanner.delegation_events() == 0  # fixed: the mark goes
        dns_server.add_cname("_acme-challenge.customer.test", "elsewhere.customer.test")
        assert world.scanner.delegation_events() == 1  # a new break is news again
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
