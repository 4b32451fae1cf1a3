"""ACME accounts, orders and the challenge records the DNS and HTTP servers publish."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from certok.db.models.base import Base, UTCDateTime


class AcmeAccount(Base):
    """One ACME account per issuer; its key is encrypted at rest."""

    __tablename__ = "acme_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64), unique=True)
    directory_url: Mapped[str] = mapped_column(Text)
    key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    account_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Order(Base):
    """A certificate order: certok's record of intent plus the saved ACME state between steps."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_due", "state", "next_attempt_at"),
        # The purge's look-up of finished orders past their retention (certok.orders.purge).
        Index("ix_orders_finished", "state", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(8))
    challenge_type: Mapped[str] = mapped_column(String(8))
    domains: Mapped[str] = mapped_column(Text)
    # pending | issued | failure (the API's words)
    state: Mapped[str] = mapped_column(String(16))
    # why it is still pending (last retryable problem) or why it failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    acme_order_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    # ACME orders created so far for this order (a dead authorization may need a new one)
    acme_orders: Mapped[int] = mapped_column(Integer, default=0)
    key_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    csr_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The certificate's subject as apply shows it (crypto.certificate_subject), written when
    # issued; NULL for orders issued before migration 0009, whose certificate is parsed instead.
    subject: Mapped[str | None] = mapped_column(String(253), nullable=True)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    not_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deadline_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The ACME profile asked for, and the certificate this order renews (issue 16).
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    replaces_certificate_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ChallengeRecord(Base):
    """Challenge material presented for a pending authorization, served by any node.

    dns-01: ``name`` is the delegated label inside certok's zone and ``value`` the TXT value.
    http-01: ``name`` is ``<host>/<token>`` and ``value`` the key authorization.
    """

    __tablename__ = "challenge_records"
    __table_args__ = (Index("ix_challenge_records_kind_name", "kind", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(400))
    value: Mapped[str] = mapped_column(Text)
    authz_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # When certok told the CA to validate; a CA may show the challenge `pending` until its
    # validation ends (Pebble does while it sleeps), and answering again only adds load.
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
