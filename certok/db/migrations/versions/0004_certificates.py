"""certificate records, order profile and replaces, tenant default profile

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import certok.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    utc = certok.db.models.UTCDateTime
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("domains", sa.Text(), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("acme_account_id", sa.Integer(), nullable=True),
        sa.Column("account_url", sa.Text(), nullable=True),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("not_before", utc(), nullable=False),
        sa.Column("not_after", utc(), nullable=False),
        sa.Column("key_type", sa.String(length=8), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("ari_cert_id", sa.String(length=200), nullable=True),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("replaces_id", sa.Integer(), nullable=True),
        sa.Column("replaced_by_id", sa.Integer(), nullable=True),
        sa.Column("renew_at", utc(), nullable=False),
        sa.Column("ari", sa.Boolean(), nullable=False),
        sa.Column("next_check_at", utc(), nullable=True),
        sa.Column("ari_window_start", utc(), nullable=True),
        sa.Column("ari_window_end", utc(), nullable=True),
        sa.Column("ari_explanation_url", sa.Text(), nullable=True),
        sa.Column("ari_error", sa.Text(), nullable=True),
        sa.Column("renewal_noticed_at", utc(), nullable=True),
        sa.Column("revoke_reason", sa.Integer(), nullable=True),
        sa.Column("revoke_requested_at", utc(), nullable=True),
        sa.Column("revoke_error", sa.Text(), nullable=True),
        sa.Column("revoked_at", utc(), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index("ix_certificates_tenant_id_id", ["tenant_id", "id"], unique=False)
        batch_op.create_index("ix_certificates_next_check_at", ["next_check_at"], unique=False)
        batch_op.create_index(
            "ix_certificates_renewal_due", ["renewal_noticed_at", "renew_at"], unique=False
        )
        batch_op.create_index("ix_certificates_not_after", ["not_after"], unique=False)
        batch_op.create_index(
            "ix_certificates_revoke_requested_at", ["revoke_requested_at"], unique=False
        )
        batch_op.create_index(
            "ix_certificates_tenant_id_renew_at", ["tenant_id", "renew_at"], unique=False
        )
        batch_op.create_index(
            "ix_certificates_tenant_id_not_after", ["tenant_id", "not_after"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_certificates_ari_cert_id"), ["ari_cert_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_certificates_order_id"), ["order_id"], unique=False)
    op.create_table(
        "certificate_secrets",
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("key_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.id"]),
        sa.PrimaryKeyConstraint("certificate_id"),
    )
    op.create_table(
        "certificate_names",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("certificate_names", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_certificate_names_certificate_id"), ["certificate_id"], unique=False
        )
        batch_op.create_index(
            "ix_certificate_names_tenant_id_name", ["tenant_id", "name"], unique=False
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("profile", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("replaces_certificate_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("default_profile", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("default_profile")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_column("replaces_certificate_id")
        batch_op.drop_column("profile")
    op.drop_table("certificate_names")
    op.drop_table("certificate_secrets")
    op.drop_table("certificates")
