"""Indexes for reads that walked or fetched more rows than they needed at a million orders

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

- `ix_orders_finished` (state, finished_at): the purge's look-up of orders past their
  retention took `ix_orders_due` for the state alone, so on a store of a million issued
  orders each purge read every order row (the whole table) to find none old enough.
- `ix_verification_codes_read` (code, tenant_id, order_id, expires_at): apply's read of a
  polled code (certok.orders.code_reads) finds what it needs of the code in the index, not
  in a table page of its own.
- `ix_certificates_order_id_renew_at` replaces `ix_certificates_order_id`: the same look-up
  by order, with the one column apply reads of the certificate record.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_orders_finished", "orders", ["state", "finished_at"])
    op.create_index(
        "ix_verification_codes_read",
        "verification_codes",
        ["code", "tenant_id", "order_id", "expires_at"],
    )
    op.create_index("ix_certificates_order_id_renew_at", "certificates", ["order_id", "renew_at"])
    op.drop_index("ix_certificates_order_id", table_name="certificates")


def downgrade() -> None:
    op.create_index("ix_certificates_order_id", "certificates", ["order_id"])
    op.drop_index("ix_certificates_order_id_renew_at", table_name="certificates")
    op.drop_index("ix_verification_codes_read", table_name="verification_codes")
    op.drop_index("ix_orders_finished", table_name="orders")
