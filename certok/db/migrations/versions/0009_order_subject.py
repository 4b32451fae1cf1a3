"""orders.subject: the issued certificate's subject, as apply shows it

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-05

Written when an order is issued, so an apply poll that misses the answer cache does not parse
the certificate for it. Orders issued before this revision keep NULL and are parsed when read:
no backfill, so the upgrade takes no time on a large database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both databases: no table copy, however many orders there are.
    op.add_column("orders", sa.Column("subject", sa.String(length=253), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("subject")
