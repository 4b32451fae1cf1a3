"""Gauges read from the database at scrape time, including tables other parts of certok add
(certificate records, webhook deliveries, agents): absent tables give no series, present
ones are counted."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from certok.db.engine import transaction
from certok.metrics import MetricsPage
from certok.readiness import DATABASE_GAUGES
from certok.store import Store
from certok.tenants import service as tenants


def scrape(store: Store) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    page = MetricsPage(store.sessions, DATABASE_GAUGES).render().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[key] = sample.value
    return found


def stamp(when: dt.datetime) -> str:
    return when.replace(tzinfo=None).isoformat(sep=" ")


def test_database_gauges(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenants.create_tenant(session, "on")
        tenants.create_tenant(session, "off")
        tenants.set_disabled(session, "off", True)
    before = scrape(store)
    assert before["certok_tenants"] == {(("status", "active"),): 1, (("status", "disabled"),): 1}
    for name in ("certok_certificates", "certok_webhook_deliveries", "certok_agent_hosts"):
        assert name not in before  # their tables do not exist (yet)

    try:
        now = dt.datetime.now(dt.UTC)
        soon, later = now + dt.timedelta(days=5), now + dt.timedelta(days=60)
        with store.engine.begin() as db:
            db.execute(
                text(
                    "CREATE TABLE certificates (issuer TEXT, not_after TIMESTAMP,"
                    " renew_at TIMESTAMP, revoked_at TIMESTAMP, replaced_by_id INTEGER)"
                )
            )
            rows = [
                ("letsencrypt", later, later, None, None),  # valid
                ("letsencrypt", soon, now - dt.timedelta(days=1), None, None),  # expiring
                ("google", now - dt.timedelta(days=1), now - dt.timedelta(days=20), None, None),
                ("google", later, later, now, None),  # revoked
            ]
            for issuer, not_after, renew_at, revoked_at, replaced in rows:
                db.execute(
                    text(
                        "INSERT INTO certificates (issuer, not_after, renew_at, revoked_at, "
                        "replaced_by_id) VALUES (:i, :n, :r, :v, :p)"
                    ),
                    {
                        "i": issuer,
                        "n": stamp(not_after),
                        "r": stamp(renew_at),
                        "v": stamp(revoked_at) if revoked_at else None,
                        "p": replaced,
                    },
                )
            db.execute(text("CREATE TABLE webhook_deliveries (state TEXT)"))
            db.execute(
                text(
                    "INSERT INTO webhook_deliveries (state) VALUES ('pending'), "
                    "('delivered'), ('delivered')"
                )
            )
            db.execute(
                text("CREATE TABLE agent_hosts (last_seen_at TIMESTAMP, uninstalled_at TIMESTAMP)")
            )
            db.execute(
                text(
                    "INSERT INTO agent_hosts (last_seen_at, uninstalled_at) VALUES "
                    f"('{stamp(now)}', NULL), ('{stamp(now - dt.timedelta(hours=3))}', NULL), "
                    f"('{stamp(now - dt.timedelta(days=9))}', '{stamp(now)}')"
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
        assert list(soonest) == [(("issuer", "letsencrypt"),)]
        assert abs(soonest[(("issuer", "letsencrypt"),)] - soon.timestamp()) < 1
        assert after["certok_webhook_deliveries"] == {
            (("state", "delivered"),): 2,
            (("state", "pending"),): 1,
        }
        assert after["certok_agent_hosts"] == {(): 2}
        oldest = after["certok_agent_oldest_last_seen_timestamp_seconds"][()]
        assert abs(oldest - (now - dt.timedelta(hours=3)).timestamp()) < 1
    finally:  # the PostgreSQL database is shared by the session's tests
        with store.engine.begin() as db:
            for name in ("certificates", "webhook_deliveries", "agent_hosts"):
                db.execute(text(f"DROP TABLE IF EXISTS {name}"))
