"""The certificate a new order renews (certok/certificates/service.py RENEWED_CERTIFICATE,
read by certok/certificates/order_profile.py `order_terms`): the tenant's newest live
certificate for exactly the order's names, however many of the tenant's other certificates,
expired or live, share one of those names; through the names' indexes on SQLite."""

from __future__ import annotations

import datetime as dt
from itertools import count
from typing import Any

from sqlalchemy import insert, update

from certok.certificates.order_profile import order_terms
from certok.db.engine import transaction
from certok.db.models import Certificate, CertificateName
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.kit.plans import sqlite_plans

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
_serials = count(1)


def _tenant(store: Store, name: str = "alpha") -> int:
    with transaction(store.sessions) as session:
        return tenants.create_tenant(session, name).id


def _certificate(store: Store, tenant_id: int, names: list[str], **columns: Any) -> int:
    """A stored certificate for `names` (its SANs: lower case, as records keep them)."""
    serial = next(_serials)
    values = {
        "tenant_id": tenant_id,
        "domains": ",".join(names),
        "issuer": "letsencrypt",
        "serial": f"{serial:x}",
        "not_before": NOW - 80 * DAY,
        "not_after": NOW + 10 * DAY,
        "key_type": "ECC",
        "order_id": serial,
        "renew_at": NOW - DAY,
        "created_at": NOW - 80 * DAY,
        **columns,
    }
    with transaction(store.sessions) as session:
        certificate_id = int(
            session.execute(
                insert(Certificate).values(values).returning(Certificate.id)
            ).scalar_one()
        )
        rows = [
            {"certificate_id": certificate_id, "tenant_id": tenant_id, "name": n} for n in names
        ]
        session.execute(insert(CertificateName), rows)
    return certificate_id


def _renews(store: Store, tenant_id: int, domains: list[str]) -> int | None:
    terms = order_terms(
        store.sessions,
        None,
        tenant_id=tenant_id,
        issuer="letsencrypt",
        requested=None,
        deadline_seconds=3600,
        domains=domains,
    )
    return terms.renews


def test_sixty_others_sharing_the_name_do_not_hide_the_renewed_certificate(store: Store) -> None:
    tenant_id = _tenant(store)
    renewed = _certificate(store, tenant_id, ["a.example.com", "b.example.com"])
    # Newer certificates carrying the same smallest name with others, half of them expired.
    for n in range(60):
        expired = {"not_after": NOW - DAY} if n % 2 else {}
        _certificate(store, tenant_id, ["a.example.com", f"x{n}.example.com"], **expired)
    assert _renews(store, tenant_id, ["b.example.com", "a.example.com"]) == renewed
    assert _renews(store, tenant_id, ["a.example.com", "x59.example.com"]) is not None
    assert _renews(store, tenant_id, ["a.example.com"]) is None


def test_exactly_the_names_newest_live_first(store: Store) -> None:
    tenant_id = _tenant(store)
    other_tenant = _tenant(store, "beta")
    older = _certificate(store, tenant_id, ["a.example.com", "b.example.com"])
    newer = _certificate(store, tenant_id, ["b.example.com", "a.example.com"])
    revoked = _certificate(store, tenant_id, ["a.example.com", "b.example.com"], revoked_at=NOW)
    replaced = _certificate(store, tenant_id, ["a.example.com", "b.example.com"])
    with transaction(store.sessions) as session:
        session.execute(
            update(Certificate).where(Certificate.id == replaced).values(replaced_by_id=older)
        )
    _certificate(store, other_tenant, ["a.example.com", "b.example.com"])
    _certificate(store, tenant_id, ["a.example.com", "b.example.com", "c.example.com"])
    _certificate(store, tenant_id, ["b.example.com"])
    assert revoked > newer and replaced > newer
    assert _renews(store, tenant_id, ["A.example.com", "b.example.com"]) == newer
    assert _renews(store, tenant_id, ["a.example.com", "c.example.com"]) is None
    assert _renews(store, tenant_id, ["b.example.com"]) is not None
    assert _renews(store, other_tenant, ["b.example.com", "a.example.com"]) not in (None, newer)


def test_the_lookup_reads_through_the_names_indexes(store: Store) -> None:
    if store.engine.dialect.name != "sqlite":
        return  # the plan is read from SQLite's EXPLAIN QUERY PLAN
    tenant_id = _tenant(store)
    _certificate(store, tenant_id, ["a.example.com", "b.example.com"])
    [plan] = sqlite_plans(
        store.engine,
        lambda sql: "its_names" in sql,
        lambda: _renews(store, tenant_id, ["a.example.com", "b.example.com"]),
    )
    assert "USING INDEX ix_certificate_names_tenant_id_name" in plan, plan
    assert "ix_certificate_names_certificate_id" in plan, plan
    for table in ("certificates", "certificate_names", "its_names", "tenants"):
        assert f"SCAN {table}" not in plan, plan
