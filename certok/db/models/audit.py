"""The audit log (issue 20): who did what, when, from where."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from certok.db.models.base import Base, UTCDateTime


class AuditEvent(Base):
    """One administrative action: tenant, token, user, webhook and revoke changes.

    Append-only; never carries a secret (a token appears by its first 6 characters only).
    ``tenant_id`` is a plain column, not a foreign key: the record outlives its tenant.
    """

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_tenant_id_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(400))
    tenant_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(200))
