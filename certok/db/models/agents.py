"""Agents (issue 17): hosts running httpsok.sh, their managed certificates, their reports."""

from __future__ import annotations

import datetime as dt

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
from certok.db.models.certificates import Certificate


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
