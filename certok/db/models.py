"""The database schema (SQLAlchemy 2 declarative). Alembic migrations mirror it exactly."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import ClassVar

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
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
    # Every model here is mapped to one Table (no joined or custom selectables), so the
    # Core statements built from `Model.__table__` across certok type-check as such.
    __table__: ClassVar[Table]


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
    # A tenant's profile when apply names none.
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
    # The console's token list shows a name and when each token was last used.
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


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


# --- console (issue 19): users, sessions, recovery codes, token names, delegation checks -----
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

# --- agents (issue 17): hosts running httpsok.sh, their managed certificates, their reports ---


class AgentHost(Base):
    """A host running an agent, known by the `httpsok-uuid` it sends, within one tenant."""

    __tablename__ = "agent_hosts"
    __table_args__ = (UniqueConstraint("tenant_id", "uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    uuid: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    os_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    nginx_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    uninstalled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ManagedCertificate(Base):
    """A certificate file on a host that certok keeps current: (tenant, host, certificate path)
    → the names of the server blocks using it. Only facts derived from the host's nginx
    configuration are kept, never its text."""

    __tablename__ = "managed_certificates"
    __table_args__ = (UniqueConstraint("host_id", "cert_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("agent_hosts.id"), index=True)
    # What the agent passes as `code`: random, unique across tenants.
    code: Mapped[str] = mapped_column(String(32), unique=True)
    cert_path: Mapped[str] = mapped_column(Text)
    key_path: Mapped[str] = mapped_column(Text)
    # Candidate names (canonical, comma-separated) and the names skipped with why (JSON).
    names: Mapped[str] = mapped_column(Text)
    skipped: Mapped[str] = mapped_column(Text)
    # Still in the host's configuration at its last upload.
    active: Mapped[bool] = mapped_column(Boolean)
    # The order last started for it, and the certificate record it deploys now (no foreign
    # keys: the purge deletes finished orders, and certificate records after they expire).
    order_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    certificate_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The leaf certificate the agent last uploaded from disk (its fingerprint only).
    disk_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AgentLogEntry(Base):
    """What an agent reported (`/v1/nginx/log/{type}`) or certok noted about a host's run."""

    __tablename__ = "agent_log_entries"
    __table_args__ = (Index("ix_agent_log_entries_host_id_id", "host_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("agent_hosts.id"))
    managed_certificate_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


# Console (issue 19): a tenant's certificates by expiry (dashboard, certificates page).
Index("ix_certificates_tenant_not_after", Certificate.tenant_id, Certificate.not_after)

# --- events and webhooks (issue 16: outbox, Standard Webhooks delivery, notifyUrl) -----------


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
# --- quotas: per-tenant and per-ACME-account order budgets (issue 14) ------------------------

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


# --- audit log (issue 20: who did what, when, from where) ------------------------------------


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
