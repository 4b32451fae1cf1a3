"""Certificate records: issued certificates, their keys and names (issue 16)."""

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


class Certificate(Base):
    """An issued certificate, kept until `certificate_retention_days` after it expires,
    whatever becomes of the order it came from (certok/orders/purge.py).

    The chain and the key live in `certificate_secrets`: scans and lists read small rows
    (with the PEM inline, every row filled a page of its own, so a list filtered by status
    read a page per record).
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
        # By order, with renew_at: apply's read of an order's certificate record
        # (certok.orders.code_reads) takes what it needs from the index alone.
        Index("ix_certificates_order_id_renew_at", "order_id", "renew_at"),
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
    order_id: Mapped[int] = mapped_column(Integer)
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
