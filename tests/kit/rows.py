"""Rows as certok's other parts write them: tenants, orders, delegations, dns-01 TXT values.

`order_row` holds the columns every order has, so a test names only the ones it is about.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import transaction
from certok.db.models import ChallengeRecord, Delegation, Order, Tenant


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def add_tenant(session: Session, name: str, created_at: dt.datetime | None = None) -> int:
    """A tenant (enabled), flushed so its id is known; returns the id."""
    tenant = Tenant(name=name, disabled=False, created_at=created_at or now())
    session.add(tenant)
    session.flush()
    return tenant.id


def order_row(tenant_id: int, at: dt.datetime, **columns: Any) -> dict[str, Any]:
    """The columns of a pending ECC dns-01 order for www.example.com created `at`, due then
    and given a day; `columns` replace or add to them. For `Order(**...)` or `insert(Order)`."""
    return {
        "tenant_id": tenant_id,
        "issuer": "letsencrypt",
        "algorithm": "ECC",
        "challenge_type": "dns",
        "domains": "www.example.com",
        "state": "pending",
        "attempts": 0,
        "acme_orders": 0,
        "next_attempt_at": at,
        "deadline_at": at + dt.timedelta(days=1),
        "created_at": at,
    } | columns


@dataclass
class Zone:
    """Writes the rows certok's other parts write: delegations and dns-01 TXT values."""

    sessions: sessionmaker[Session]
    tenant_id: int
    order_id: int

    def delegate(self, label: str, base_name: str) -> None:
        with transaction(self.sessions) as session:
            session.add(
                Delegation(
                    tenant_id=self.tenant_id, base_name=base_name, label=label, created_at=now()
                )
            )

    def present(self, label: str, value: str) -> None:
        with transaction(self.sessions) as session:
            session.add(
                ChallengeRecord(
                    order_id=self.order_id,
                    kind="dns-01",
                    name=label,
                    value=value,
                    authz_url=f"https://ca.test/authz/{value}",
                    created_at=now(),
                )
            )

    def clean_up(self, label: str) -> None:
        with transaction(self.sessions) as session:
            session.execute(delete(ChallengeRecord).where(ChallengeRecord.name == label))


def make_zone(sessions: sessionmaker[Session]) -> Zone:
    """A tenant and a pending dns-01 order to hang delegations and TXT values on."""
    with transaction(sessions) as session:
        tenant_id = add_tenant(session, "tenant-a")
        order = Order(**order_row(tenant_id, now(), domains="customer.test,*.customer.test"))
        session.add(order)
        session.flush()
        return Zone(sessions, tenant_id, order.id)
