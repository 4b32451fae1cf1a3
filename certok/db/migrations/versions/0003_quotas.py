"""per-tenant and per-ACME-account order budgets: the newOrder ledger, orders by tenant and state

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certok.db.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_new_orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_acme_new_orders_issuer_created", "acme_new_orders", ["issuer", "created_at"]
    )
    op.create_index(
        "ix_acme_new_orders_tenant_created", "acme_new_orders", ["tenant_id", "created_at"]
    )
    op.create_index("ix_orders_tenant_state", "orders", ["tenant_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_orders_tenant_state", table_name="orders")
    op.drop_index("ix_acme_new_orders_tenant_created", table_name="acme_new_orders")
    op.drop_index("ix_acme_new_orders_issuer_created", table_name="acme_new_orders")
    op.drop_table("acme_new_orders")
