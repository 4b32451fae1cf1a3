"""console: users, sessions, recovery codes, delegation checks, token names, order indexes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import certok.db.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("operator", sa.Boolean(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("invite_digest", sa.String(length=64), nullable=True),
        sa.Column("invite_expires_at", certok.db.models.UTCDateTime(), nullable=True),
        sa.Column("totp_encrypted", sa.LargeBinary(), nullable=True),
        sa.Column("totp_last_step", sa.Integer(), nullable=True),
        sa.Column("created_at", certok.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("invite_digest"),
    )
    with op.batch_alter_table("console_users", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_console_users_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "console_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("mfa_pending", sa.Boolean(), nullable=False),
        sa.Column("created_at", certok.db.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", certok.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["console_users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    with op.batch_alter_table("console_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_console_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "console_recovery_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("used_at", certok.db.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["console_users.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("console_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_recovery_codes_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "console_delegation_checks",
        sa.Column("delegation_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("checked_at", certok.db.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["delegation_id"], ["delegations.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("delegation_id"),
    )
    with op.batch_alter_table("console_delegation_checks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_delegation_checks_tenant_id"), ["tenant_id"], unique=False
        )

    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("last_used_at", certok.db.models.UTCDateTime(), nullable=True)
        )

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orders_tenant_state_not_after", ["tenant_id", "state", "not_after"], unique=False
        )
        batch_op.create_index(
            "ix_orders_issuer_state_finished", ["issuer", "state", "finished_at"], unique=False
        )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(
            "ix_certificates_tenant_not_after", ["tenant_id", "not_after"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_tenant_not_after")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_issuer_state_finished")
        batch_op.drop_index("ix_orders_tenant_state_not_after")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("name")
    op.drop_table("console_delegation_checks")
    op.drop_table("console_recovery_codes")
    op.drop_table("console_sessions")
    op.drop_table("console_users")
