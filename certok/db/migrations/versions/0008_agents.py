"""agents: hosts running httpsok.sh, their managed certificates, their log

Revision ID: 0008
Revises: 0004 (0002 before the certificates branch was merged in)
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certok.db.models import UTCDateTime

revision = "0008"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=64), nullable=False),
        sa.Column("agent_version", sa.String(length=32), nullable=True),
        sa.Column("os_name", sa.String(length=128), nullable=True),
        sa.Column("nginx_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_done_at", UTCDateTime(), nullable=True),
        sa.Column("uninstalled_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "uuid"),
    )
    op.create_index("ix_agent_hosts_tenant_id", "agent_hosts", ["tenant_id"], unique=False)
    op.create_table(
        "managed_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("cert_path", sa.Text(), nullable=False),
        sa.Column("key_path", sa.Text(), nullable=False),
        sa.Column("names", sa.Text(), nullable=False),
        sa.Column("skipped", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("certificate_id", sa.Integer(), nullable=True),
        sa.Column("disk_sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["agent_hosts.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code"),
        sa.UniqueConstraint("host_id", "cert_path"),
    )
    op.create_index(
        "ix_managed_certificates_host_id", "managed_certificates", ["host_id"], unique=False
    )
    op.create_index(
        "ix_managed_certificates_tenant_id", "managed_certificates", ["tenant_id"], unique=False
    )
    op.create_table(
        "agent_log_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("managed_certificate_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["host_id"], ["agent_hosts.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_agent_log_entries_host_id_id", "agent_log_entries", ["host_id", "id"], unique=False
    )
    op.create_index(
        "ix_agent_log_entries_tenant_id", "agent_log_entries", ["tenant_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("agent_log_entries")
    op.drop_table("managed_certificates")
    op.drop_table("agent_hosts")
