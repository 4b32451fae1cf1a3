"""Leases a node's previous run left behind."""

from __future__ import annotations

from sqlalchemy import or_, update
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import transaction
from certok.db.models import Order
from certok.db.results import rows_changed
from certok.order_states import PENDING


def release_node_leases(sessions: sessionmaker[Session], node: str) -> int:
    """Free the leases held by `node` and by its worker processes (`node/1`, `node/2`, …).

    Called once at start, before any worker of this node runs: whatever they hold belongs to
    a previous run that died, and waiting for those leases to expire would stall its orders.
    Covers both forms so that changing `processes` between runs loses no time either.
    """
    escaped = node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    with transaction(sessions) as session:
        result = session.execute(
            update(Order)
            .where(
                Order.state == PENDING,
                or_(Order.lease_owner == node, Order.lease_owner.like(f"{escaped}/%", escape="\\")),
            )
            .values(lease_owner=None, lease_until=None)
        )
        return rows_changed(result)
