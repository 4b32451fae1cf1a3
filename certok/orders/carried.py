"""What a step of the order driver carries to the order's next step instead of a read.

A step the worker drives straight on from knows what changed in the order's row: only what its
own saves wrote (`OrderSaves` records them). `snapshot_after` applies that to the snapshot the
step began with, or says the next step must read the order itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from certok.orders.rows import OrderSnapshot

# The order's columns a step's saves write that a snapshot holds as they are, and the ones it
# does not hold at all. A save of any other column (the order's end, the lease handed back)
# leaves nothing to carry to a next step.
_CARRIED_AS_IS = frozenset({"acme_order_url", "acme_orders", "csr_pem", "attempts", "reason"})
_NOT_IN_SNAPSHOT = frozenset({"next_attempt_at"})
# `written`'s entry for the challenge material: True once presented, False once all removed.
HAS_RECORDS = "has_records"
# `written`'s mark of a step that failed after it may have written something unseen.
UNSURE = "unsure"


def snapshot_after(order: OrderSnapshot, written: dict[str, Any]) -> OrderSnapshot | None:
    """`order` as the row is after a step of the lease holder wrote `written` (the columns its
    saves set, `HAS_RECORDS`, `UNSURE`), for the next step instead of a read; None when that
    step must read the order.

    Only the lease holder writes these columns, and anyone else who changes the order (a
    disabled tenant's stop, a node's release of its leases) takes the lease away. So a
    snapshot is carried only from a step whose save the lease fence let through (a held poll
    saves nothing: the next step reads), and never into a step that would make a new ACME
    order. What a read would show and a carried snapshot may not: `notifies` as of the last
    read, and `has_records` true after material was removed piecemeal (one read more, never
    a removal missed)."""
    if UNSURE in written or not any(column != HAS_RECORDS for column in written):
        return None
    changes: dict[str, Any] = {}
    for column, value in written.items():
        if column in _CARRIED_AS_IS or column == HAS_RECORDS:
            changes[column] = value
        elif column == "key_encrypted":
            changes["has_key"] = value is not None
        elif column not in _NOT_IN_SNAPSHOT:
            return None
    carried = dataclasses.replace(order, **changes)
    return None if carried.acme_order_url is None else carried
