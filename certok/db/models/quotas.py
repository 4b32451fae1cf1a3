"""Quotas: per-tenant and per-ACME-account order budgets (issue 14)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from certok.db.models.base import Base, UTCDateTime
from certok.db.models.orders import Order

# A tenant's pending orders are counted at each first redemption of a code (the pending cap)
# and its running orders for the same names looked up (joining): by tenant, then state.
Index("ix_orders_tenant_state", Order.tenant_id, Order.state)


class AcmeNewOrder(Base):
    """One newOrder certok sent (or was about to send) to a CA: the ledger behind the per-ACME-
    account budget and the per-tenant cap on new ACME orders in a sliding window.

    A row is written before the request goes out, so a budget can never be overrun by requests
    in flight; rows older than the longest window are deleted as new ones come. No foreign
    keys: orders are purged on their own schedule, and the ledger must outlive none of them.
    """

    __tablename__ = "acme_new_orders"
    __table_args__ = (
        Index("ix_acme_new_orders_issuer_created", "issuer", "created_at"),
        Index("ix_acme_new_orders_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[int] = mapped_column(Integer)
    order_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
