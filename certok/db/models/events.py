"""Events and webhooks (issue 16): outbox, Standard Webhooks delivery, notifyUrl."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from certok.db.models.base import Base, UTCDateTime
from certok.db.models.certificates import Certificate


class WebhookEndpoint(Base):
    """A tenant's webhook endpoint; its `whsec_` secret is encrypted at rest (SecretBox).

    While a secret rotates, the previous one signs too until `previous_secret_until`.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The API's id ("wh_<hex>"): unguessable, so ids say nothing about other tenants.
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(200), default="")
    # Comma-separated event types it receives; empty: every type.
    event_types: Mapped[str] = mapped_column(Text, default="")
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    previous_secret_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    previous_secret_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set when the receiver answered 410 Gone: nothing more is sent until it is re-created.
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """The outbox: one message to one destination, written in the transaction of the state
    change it reports, delivered (and retried) by the delivery worker under a lease.

    `message_id` is the `webhook-id` header: every attempt of this row sends the same one, and
    `payload` is the exact body signed, so a receiver can de-duplicate redeliveries.
    A notifyUrl delivery has no endpoint: `url` is the order's notifyUrl.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_endpoints.id"), nullable=True
    )
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    # pending | delivered | failed | cancelled
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OrderNotifyUrl(Base):
    """The notifyUrl given with a POST /v1/cert/apply: told the order's outcome once.

    No foreign key to orders: the order purge deletes orders without knowing of this table,
    and the row is removed when the outcome is queued.
    """

    __tablename__ = "order_notify_urls"

    order_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class EventMark(Base):
    """Events sent at most once per subject (`certificate.expiring` per certificate and
    threshold, `delegation.broken` per break): the mark is written with the event."""

    __tablename__ = "event_marks"
    __table_args__ = (UniqueConstraint("kind", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


# Indexes the event scans (certok/events/scans.py) read certificates through: only rows near
# their renewal or revocation moment, never the whole table (expiry: ix_certificates_not_after).
Index("ix_certificates_renew_at", Certificate.renew_at)
Index("ix_certificates_revoked_at", Certificate.revoked_at)
