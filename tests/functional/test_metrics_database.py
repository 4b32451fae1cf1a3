"""Gauges read from the database at scrape time: tenants, certificate records by status and
the soonest expiry, webhook deliveries by state, agents' hosts."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, update

from certok.db.engine import transaction
from certok.db.models import AgentHost, Certificate, WebhookDelivery
from certok.metrics import MetricsPage
from certok.persistence import Store
from certok.readiness import DATABASE_GAUGES
from certok.tenants import service as tenants
from tests.kit.certs import FakeCa, add_certificate


def scrape(store: Store) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    page = MetricsPage(store.sessions, DATABASE_GAUGES).render().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def test_database_gauges(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant_id = tenants.create_tenant(session, "on").id
        tenants.create_tenant(session, "off")
        tenants.set_disabled(session, "off", True)
    before = scrape(store)
    assert before["certok_tenants"] == {(("status", "active"),): 1, (("status", "disabled"),): 1}
    # Empty tables: no certificate, delivery or host counted yet.
    assert not any(before.get("certok_certificates", {}).values())
    assert not any(before.get("certok_webhook_deliveries", {}).values())
    assert not any(before.get("certok_agent_hosts", {}).values())

    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    ca = FakeCa.create()

    def certificate(issuer: str, not_before: dt.datetime, lifetime_days: float, serial: int) -> int:
        return add_certificate(
            store.sessions,
            store.box,
            ca,
            tenant_id,
            [f"n{serial}.example.com"],
            not_before=not_before,
            lifetime=dt.timedelta(days=lifetime_days),
            serial=serial,
            issuer=issuer,
        )

    later = certificate("letsencrypt", now - dt.timedelta(days=1), 90, 1)  # valid
    soon = certificate("letsencrypt", now - dt.timedelta(days=80), 85, 2)  # expiring
    certificate("google", now - dt.timedelta(days=91), 90, 3)  # expired
    revoked = certificate("google", now - dt.timedelta(days=1), 90, 4)
    with store.engine.begin() as db:
        db.execute(
            update(Certificate.__table__)
            .where(Certificate.__table__.c.id == revoked)
            .values(revoked_at=now)
        )
        for state in ("pending", "delivered", "delivered"):
            db.execute(
                insert(WebhookDelivery.__table__).values(
                    message_id=f"msg_{state}_{now.timestamp()}",
                    tenant_id=tenant_id,
                    url="https://hooks.example.net/",
                    event_type="certificate.issued",
                    payload="{}",
                    state=state,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
        for uuid, seen, gone in (
            ("host-now", now, None),
            ("host-3h", now - dt.timedelta(hours=3), None),
            ("host-gone", now - dt.timedelta(days=9), now),
        ):
            db.execute(
                insert(AgentHost.__table__).values(
                    tenant_id=tenant_id,
                    uuid=uuid,
                    created_at=seen,
                    last_seen_at=seen,
                    uninstalled_at=gone,
                )
            )
    after = scrape(store)
    assert after["certok_certificates"] == {
        (("status", "valid"),): 1,
        (("status", "expiring"),): 1,
        (("status", "expired"),): 1,
        (("status", "revoked"),): 1,
    }
    soonest = after["certok_certificate_soonest_expiration_timestamp_seconds"]
    with store.sessions() as session:
        soon_after = session.get(Certificate, soon).not_after  # type: ignore[union-attr]
        assert session.get(Certificate, later) is not None
    assert abs(soonest[(("issuer", "letsencrypt"),)] - soon_after.timestamp()) < 1
    assert after["certok_webhook_deliveries"] == {
        (("state", "delivered"),): 2,
        (("state", "pending"),): 1,
    }
    assert after["certok_agent_hosts"] == {(): 2}
    oldest = after["certok_agent_oldest_last_seen_timestamp_seconds"][()]
    assert abs(oldest - (now - dt.timedelta(hours=3)).timestamp()) < 1
