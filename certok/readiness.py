"""What `/readyz` checks in a certok process, and the database gauges `/metrics` reads.

Both read live state at request time, from the parts the runtime hands them: adding a check
or a gauge is one entry here (or a ``HealthChecks.add`` / ``DatabaseGauge`` elsewhere).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import dns.message
import dns.query
import dns.rdatatype
from sqlalchemy import Integer, String, case, column, func, inspect, select, table, text
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import utcnow
from certok.db.models import Order, Tenant, UTCDateTime
from certok.health import Check, HealthChecks
from certok.metrics import DatabaseGauge

DNS_CHECK_TIMEOUT_SECONDS = 1.0


def database_check(sessions: sessionmaker[Session]) -> Check:
    def check() -> str | None:
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            return f"database unreachable: {reason}"
        return None

    return check


def dns_check(host: str, port: Callable[[], int], zone: str) -> Check:
    """The DNS listener answers an SOA query for the zone (over UDP, on loopback if the
    listener is on every address)."""
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - maps wildcards to loopback

    def check() -> str | None:
        query = dns.message.make_query(zone, dns.rdatatype.SOA)
        try:
            dns.query.udp(query, address, port=port(), timeout=DNS_CHECK_TIMEOUT_SECONDS)
        except Exception as exc:
            return f"DNS listener {address}:{port()} does not answer ({type(exc).__name__})"
        return None

    return check


def worker_check(
    heartbeat: Callable[[], float | None],
    stale_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    def check() -> str | None:
        beat = heartbeat()
        if beat is None:
            return "the issuance worker has not looked for work yet"
        age = clock() - beat
        if age > stale_seconds:
            return (
                f"the issuance worker last looked for work {age:.0f} s ago "
                f"(worker_heartbeat_stale_seconds {stale_seconds:g})"
            )
        return None

    return check


def process_checks(
    sessions: sessionmaker[Session],
    *,
    dns: Check | None,
    heartbeat: Callable[[], float | None] | None,
    stale_seconds: float,
) -> HealthChecks:
    checks = HealthChecks()
    checks.add("database", database_check(sessions))
    if dns is not None:
        checks.add("dns", dns)
    if heartbeat is not None:
        checks.add("worker", worker_check(heartbeat, stale_seconds))
    return checks


def _tenants_by_status(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(select(Tenant.disabled, func.count()).group_by(Tenant.disabled))
    return [("disabled" if disabled else "active", count) for disabled, count in rows]


def _orders_by_state(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(select(Order.state, func.count()).group_by(Order.state))
    return [(state, count) for state, count in rows]


# Tables other parts of certok own (certificate records, webhook deliveries, agents), read by
# name: their gauges report as soon as the table exists, and nothing (no series) before.
_CERTIFICATES = table(
    "certificates",
    column("issuer", String()),
    column("not_after", UTCDateTime()),
    column("renew_at", UTCDateTime()),
    column("revoked_at", UTCDateTime()),
    column("replaced_by_id", Integer()),
)
_DELIVERIES = table("webhook_deliveries", column("state", String()))
_AGENTS = table(
    "agent_hosts", column("last_seen_at", UTCDateTime()), column("uninstalled_at", UTCDateTime())
)


def _has(session: Session, name: str) -> bool:
    return inspect(session.connection()).has_table(name)


def _certificates_by_status(session: Session) -> list[tuple[str, int]]:
    if not _has(session, "certificates"):
        return []
    c, now = _CERTIFICATES.c, utcnow()
    status = case(
        (c.revoked_at.is_not(None), "revoked"),
        (c.replaced_by_id.is_not(None), "replaced"),
        (c.not_after <= now, "expired"),
        (c.renew_at <= now, "expiring"),
        else_="valid",
    )
    rows = session.execute(select(status, func.count()).group_by(status))
    return [(name, count) for name, count in rows]


def _soonest_expiry(session: Session) -> list[tuple[str, float]]:
    if not _has(session, "certificates"):
        return []
    c = _CERTIFICATES.c
    live = (c.revoked_at.is_(None)) & (c.replaced_by_id.is_(None)) & (c.not_after > utcnow())
    rows = session.execute(select(c.issuer, func.min(c.not_after)).where(live).group_by(c.issuer))
    return [(issuer, _timestamp(when)) for issuer, when in rows if when is not None]


def _deliveries_by_state(session: Session) -> list[tuple[str, int]]:
    if not _has(session, "webhook_deliveries"):
        return []
    state = _DELIVERIES.c.state
    return [
        (name, count)
        for name, count in session.execute(select(state, func.count()).group_by(state))
    ]


def _agent_hosts(session: Session) -> list[tuple[int]]:
    if not _has(session, "agent_hosts"):
        return []
    installed = _AGENTS.c.uninstalled_at.is_(None)
    return [(session.scalar(select(func.count()).where(installed)) or 0,)]


def _agent_oldest_last_seen(session: Session) -> list[tuple[float]]:
    if not _has(session, "agent_hosts"):
        return []
    c = _AGENTS.c
    oldest = session.scalar(select(func.min(c.last_seen_at)).where(c.uninstalled_at.is_(None)))
    return [] if oldest is None else [(_timestamp(oldest),)]


def _timestamp(when: dt.datetime) -> float:
    return when.replace(tzinfo=when.tzinfo or dt.UTC).timestamp()


# Gauges read from the database at scrape time.
DATABASE_GAUGES: list[DatabaseGauge] = [
    DatabaseGauge("certok_tenants", "Tenants by status.", ("status",), _tenants_by_status),
    DatabaseGauge(
        "certok_orders_in_database",
        "Orders kept in the database (until order_retention_hours after they end), by state.",
        ("state",),
        _orders_by_state,
    ),
    DatabaseGauge(
        "certok_certificates",
        "Certificate records by status (valid, expiring: renewal due, expired, revoked, replaced).",
        ("status",),
        _certificates_by_status,
    ),
    DatabaseGauge(
        "certok_certificate_soonest_expiration_timestamp_seconds",
        "The soonest notAfter among live certificates, by issuer (Unix time).",
        ("issuer",),
        _soonest_expiry,
    ),
    DatabaseGauge(
        "certok_webhook_deliveries",
        "Webhook deliveries in the outbox, by state.",
        ("state",),
        _deliveries_by_state,
    ),
    DatabaseGauge("certok_agent_hosts", "Hosts with an installed agent.", (), _agent_hosts),
    DatabaseGauge(
        "certok_agent_oldest_last_seen_timestamp_seconds",
        "The oldest last contact among installed agents (Unix time): a stale one shows here.",
        (),
        _agent_oldest_last_seen,
    ),
]
