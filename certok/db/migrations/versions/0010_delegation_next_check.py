"""delegations.next_check_at: when a delegation's CNAME is next re-checked, claimed by one node

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05

The event scanner used to re-check every delegation in use on every node, all at once at each
node's start. Each re-check is now claimed by moving this time forward (certok.events.scans),
so one node checks each delegation once per interval, at a moment spread over it. Existing rows
keep NULL, which the scanner reads as "never scheduled" and gives a first check time spread
over the interval: no backfill, so the upgrade takes no time on a large database, and a node of
the previous release ignores the column (its new delegations get NULL too, scheduled the same
way).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from certok.db.models import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both databases: no table copy, however many delegations there are.
    op.add_column("delegations", sa.Column("next_check_at", UTCDateTime(), nullable=True))
    # The scanner reads the due ones first, and the never-scheduled (NULL) ones, through it.
    op.create_index("ix_delegations_next_check_at", "delegations", ["next_check_at"])


def downgrade() -> None:
    op.drop_index("ix_delegations_next_check_at", table_name="delegations")
    with op.batch_alter_table("delegations") as batch:
        batch.drop_column("next_check_at")
