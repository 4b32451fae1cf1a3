"""The console's users, sessions, recovery codes and delegation checks (issue 19)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from certok.db.models.base import Base, UTCDateTime
from certok.db.models.orders import Order


class ConsoleUser(Base):
    """A person who signs in to the console: a tenant's user, or an operator (no tenant).

    Until the invite is accepted the user has no password, only the digest of a one-time
    invite secret. The TOTP secret is encrypted with the SecretBox (owner: the user id).
    """

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id"), nullable=True, index=True
    )
    email: Mapped[str] = mapped_column(String(254), unique=True)
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    invite_digest: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    invite_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    totp_encrypted: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Last TOTP time step accepted: a code is good once (RFC 6238 section 5.2).
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ConsoleSession(Base):
    """A signed-in browser. Only the SHA-256 digest of the cookie's secret is kept."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("console_users.id"), index=True)
    # True between a right password and the second factor: such a session opens no page.
    mfa_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class RecoveryCode(Base):
    """A one-time second factor for a user who lost the authenticator (digest only)."""

    __tablename__ = "console_recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("console_users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DelegationCheck(Base):
    """The last "check now" of a delegation from the console (the dashboard lists broken ones)."""

    __tablename__ = "console_delegation_checks"

    delegation_id: Mapped[int] = mapped_column(ForeignKey("delegations.id"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    valid: Mapped[bool] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


# Console pages: a tenant's certificates by expiry, its orders by state, issuer health.
Index("ix_orders_tenant_state_not_after", Order.tenant_id, Order.state, Order.not_after)
Index("ix_orders_issuer_state_finished", Order.issuer, Order.state, Order.finished_at)
