"""The order's lease-fenced save as a WITH clause, for statements that do more after it.

On PostgreSQL a save and what goes with it (the challenge material's mark or removal, the
issued certificate's record) run as one statement: data-modifying WITH clauses run once, on
one snapshot, and each later clause reads the order through this clause's RETURNING. When
the worker no longer holds the lease the UPDATE matches no row, and nothing after it writes.
Parameters: `b_order_id`, `b_worker_id`, and `v_<column>` for each saved column.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import CTE, ColumnElement, Update, bindparam, update

from certok.db.models import Order

_ORDERS = Order.__table__


def fenced_update(columns: Iterable[str]) -> Update:
    """`UPDATE orders SET <columns> WHERE id = :b_order_id AND lease_owner = :b_worker_id`:
    the save alone, which matches no row once the worker lost the lease."""
    return (
        update(_ORDERS)
        .where(
            _ORDERS.c.id == bindparam("b_order_id"),
            _ORDERS.c.lease_owner == bindparam("b_worker_id"),
        )
        .values({column: bindparam(f"v_{column}") for column in columns})
    )


def fenced_save(columns: Iterable[str], returning: Iterable[ColumnElement[object]]) -> CTE:
    """`fenced_update(columns) RETURNING <returning>`, named `saved`."""
    return fenced_update(columns).returning(*returning).cte("saved")
