"""What `/readyz` checks in a certok process, and the database gauges `/metrics` reads.

Both read live state at request time, from the parts the runtime hands them: adding a check
or a gauge is one entry here (or a ``HealthChecks.add`` / ``DatabaseGauge`` elsewhere).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.message
import dns.query
import dns.rdatatype
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from certok.db.models import Order, Tenant
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
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104

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


# Gauges read from the database at scrape time. Certificates (by status, soonest expiry),
# webhook deliveries and agents' last contact join this list where their tables live.
DATABASE_GAUGES: list[DatabaseGauge] = [
    DatabaseGauge("certok_tenants", "Tenants by status.", ("status",), _tenants_by_status),
    DatabaseGauge(
        "certok_orders_in_database",
        "Orders kept in the database (until order_retention_hours after they end), by state.",
        ("state",),
        _orders_by_state,
    ),
]
