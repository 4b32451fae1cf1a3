"""Certificate records outlive their orders and go `certificate_retention_days` after expiry."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from certok.db.engine import transaction
from certok.db.models import Certificate, Order
from certok.orders.purge import purge
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.kit.certs import FakeCa, add_certificate

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def test_records_survive_order_purging_and_go_after_retention(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "purge").id
    ca = FakeCa.create()

    def add(expired_days_ago: int, serial: int) -> int:
        not_before = NOW - dt.timedelta(days=90 + expired_days_ago)
        return add_certificate(
            store.sessions, store.box, ca, tenant, [f"p{serial}.example.com"],
            not_before=not_before, serial=serial,
        )  # fmt: skip

    live = add(-30, 1)  # expires in 30 days
    recently_expired = add(10, 2)
    long_expired = add(31, 3)
    with transaction(store.sessions) as session:  # every order finished long ago
        session.execute(Order.__table__.update().values(finished_at=NOW - 200 * DAY))
    dry = purge(store.sessions, 72, dry_run=True, clock=lambda: NOW, certificate_retention_days=30)
    assert dry.certificates == 1 and dry.orders == 3
    counts = purge(store.sessions, 72, clock=lambda: NOW, certificate_retention_days=30)
    assert counts.orders == 3 and counts.certificates == 1
    with store.sessions() as session:
        left = set(session.scalars(select(Certificate.id)))
        assert session.scalar(select(Order.id)) is None
    assert left == {live, recently_expired}
    assert long_expired not in left
    # Without the setting (an older caller), certificate records are left alone.
    assert purge(store.sessions, 72, clock=lambda: NOW + 400 * DAY).certificates == 0
