"""Tenants, their API tokens, delegations, HTTP host bindings and verification codes."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from certok.db.models.base import Base, UTCDateTime


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Random handle in the tenant-bound HTTP-01 redirect (/v1/dv/<handle>/$host/$1).
    http_handle: Mapped[str] = mapped_column(
        String(32), unique=True, default=lambda: secrets.token_hex(8)
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The ACME profile of the tenant's orders when apply names none (issue 16).
    default_profile: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiToken(Base):
    """An API token; only the SHA-256 digest of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    # first characters of the token, so an operator can tell tokens apart when revoking
    hint: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The console's token list shows a name and when each token was last used (issue 19).
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Delegation(Base):
    """A tenant's DNS delegation: `_acme-challenge.<base_name>` CNAME `<label>.<zone>`."""

    __tablename__ = "delegations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "base_name"),
        # The event scanner reads the delegations due a re-check, earliest first.
        Index("ix_delegations_next_check_at", "next_check_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    base_name: Mapped[str] = mapped_column(String(253))
    label: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # When the CNAME is next re-checked (certok.events.scans): a node claims the check by
    # moving it forward. NULL: never scheduled yet (a new row, or one from before migration
    # 0010); the scanner gives it a first time spread over the interval.
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class HttpHostBinding(Base):
    """A host verified through the seed's host-only nginx block belongs to the first tenant.

    The host-only redirect names no tenant, so without this any tenant could obtain
    certificates for any host that redirects to certok.
    """

    __tablename__ = "http_host_bindings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(253), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


CODE_READ_INDEX = "ix_verification_codes_read"


class VerificationCode(Base):
    """The one-minute code /v1/cert/dv hands out; /v1/cert/apply turns it into an order."""

    __tablename__ = "verification_codes"
    __table_args__ = (
        # All apply's read of a polled code needs of it (certok.orders.code_reads), in the
        # index: the read takes no table page of the code's.
        Index(CODE_READ_INDEX, "code", "tenant_id", "order_id", "expires_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    challenge_type: Mapped[str] = mapped_column(String(8))
    domains: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Indexed: deleting an order (the purge) looks up the codes still pointing at it.
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True, index=True)
