"""The database schema (SQLAlchemy 2 declarative). Alembic migrations mirror it exactly."""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware values")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: object
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


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


class Delegation(Base):
    """A tenant's DNS delegation: `_acme-challenge.<base_name>` CNAME `<label>.<zone>`."""

    __tablename__ = "delegations"
    __table_args__ = (UniqueConstraint("tenant_id", "base_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    base_name: Mapped[str] = mapped_column(String(253))
    label: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


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


class VerificationCode(Base):
    """The one-minute code /v1/cert/dv hands out; /v1/cert/apply turns it into an order."""

    __tablename__ = "verification_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    challenge_type: Mapped[str] = mapped_column(String(8))
    domains: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Indexed: deleting an order (the purge) looks up the codes still pointing at it.
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True, index=True)


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
    __table_args__ = (Index("ix_orders_due", "state", "next_attempt_at"),)

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
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    not_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deadline_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


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


# === certificates (issue 16: certificate records, renewal timing with ARI, profiles) ===
class Certificate(Base):
    """An issued certificate, kept until `certificate_retention_days` after it expires,
    whatever becomes of the order it came from (certok/orders/purge.py).

    The chain and the key live in `certificate_secrets`: scans and lists read small rows
    (with the PEM inline, every row filled a page of its own and a list filtered by status
    read 200 MB at 100k records).
    """

    __tablename__ = "certificates"
    __table_args__ = (
        # The list: one tenant's certificates, newest first.
        Index("ix_certificates_tenant_id_id", "tenant_id", "id"),
        # The ARI scan reads only the rows due a check (NULL: no more checks).
        Index("ix_certificates_next_check_at", "next_check_at"),
        # The renewal-due scan reads only rows past renew_at that nobody noticed yet.
        Index("ix_certificates_renewal_due", "renewal_noticed_at", "renew_at"),
        # The purge reads only the rows past expiry plus the retention.
        Index("ix_certificates_not_after", "not_after"),
        # Revocations waiting for the worker.
        Index("ix_certificates_revoke_requested_at", "revoke_requested_at"),
        # The list's status filters: expiring (past renew_at), expired (past not_after).
        Index("ix_certificates_tenant_id_renew_at", "tenant_id", "renew_at"),
        Index("ix_certificates_tenant_id_not_after", "tenant_id", "not_after"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    # Comma-separated, as the order had them.
    domains: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(String(64))
    # The ACME account that ordered it (revocation and `replaces` must use the same one).
    acme_account_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    account_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    serial: Mapped[str] = mapped_column(String(64))
    not_before: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    key_type: Mapped[str] = mapped_column(String(8))
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # RFC 9773 certID: base64url(AKI keyIdentifier) "." base64url(serial DER bytes).
    ari_cert_id: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # The order it came from (orders are purged sooner: no foreign key).
    order_id: Mapped[int] = mapped_column(Integer, index=True)
    replaces_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    replaced_by_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    renew_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Whether the issuer's directory listed renewalInfo when it was issued.
    ari: Mapped[bool] = mapped_column(Boolean, default=False)
    next_check_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ari_window_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ari_window_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ari_explanation_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    ari_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    renewal_noticed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Revocation: asked for (reason, when), then done at the CA (revoked_at) or refused.
    revoke_reason: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revoke_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoke_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class CertificateSecret(Base):
    """A certificate's full chain and private key. The key is the order's ciphertext, copied
    as is: it stays bound (SecretBox associated data) to the certificate's `order_id`, which
    never changes."""

    __tablename__ = "certificate_secrets"

    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), primary_key=True)
    key_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_pem: Mapped[str] = mapped_column(Text)


class CertificateName(Base):
    """One name of a certificate, so `/v1/cert/list?domain=` is an index lookup."""

    __tablename__ = "certificate_names"
    __table_args__ = (Index("ix_certificate_names_tenant_id_name", "tenant_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), index=True)
    tenant_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(253))


# Orders: the ACME profile asked for, and the certificate an order renews.
Order.profile = mapped_column(String(64), nullable=True)
Order.replaces_certificate_id = mapped_column(Integer, nullable=True)
# A tenant's profile when apply names none.
Tenant.default_profile = mapped_column(String(64), nullable=True)
