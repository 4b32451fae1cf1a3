"""A first redemption on PostgreSQL: one statement instead of a transaction of five or more.

Redeeming a code (`certok.orders.quotas.redeem_job`) reads the tenant's flag and the code,
looks for a running order to join and counts the tenant's pending orders, then either binds
the code to the running order or inserts a new order and binds the code to it. In a
transaction that is BEGIN, two to four statements and COMMIT, each a round trip. PostgreSQL
runs the WITH clauses of one statement together, and the binding is the compare-and-set it
always was: the code's UPDATE takes the new order's id from the orders' sequence and sets it
only while the code has no order, and the order's INSERT reads what that UPDATE returned, so
an order exists only if its code was bound to it (two racing requests: one binds and inserts,
the other writes nothing). One statement is atomic on its own: it runs in autocommit.

Under READ COMMITTED this decides as the transaction did: neither took a lock for its reads
(the join's look-up, the pending count), and the binding was, and is, the one guarded write.
Whatever the statement did not bind is answered in Python as `redeem_code` answers it (an
unknown, foreign or expired code raises, an already redeemed one gives its order); the
refusal at the pending cap says how many orders were counted.

That makes the pending cap soft on its own: requests racing on fresh codes each count the
orders committed before they started, and all may pass. With the cap on, the statement
therefore runs in a transaction that first takes the tenant's advisory lock
(`redeem_within_the_cap`): racing redemptions of one tenant queue on it, and each statement's
snapshot, taken after the lock, counts the orders the earlier ones inserted. Other tenants,
and the cap off, never wait on it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    String,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    true,
    update,
)

from certok.db.cursor_statements import CursorStatement
from certok.db.models import Order, VerificationCode
from certok.order_states import PENDING
from certok.orders.redemption import TENANT_AND_CODE, Redemption, RedemptionTerms, refusal
from certok.orders.service import check_redeemable

_ORDERS = Order.__table__
_CODES = VerificationCode.__table__


def _statement() -> Any:
    read = TENANT_AND_CODE.cte("read")
    now = bindparam("b_now", type_=_ORDERS.c.created_at.type)
    joinable = (
        select(_ORDERS.c.id)
        .where(
            _ORDERS.c.tenant_id == bindparam("b_tenant_id"),
            _ORDERS.c.state == PENDING,
            _ORDERS.c.domains == read.c.domains,
            _ORDERS.c.challenge_type == read.c.challenge_type,
            _ORDERS.c.algorithm == bindparam("b_algorithm"),
            _ORDERS.c.issuer == bindparam("b_issuer"),
            _ORDERS.c.profile.is_not_distinct_from(bindparam("b_profile", type_=String())),
            _ORDERS.c.created_at >= bindparam("b_since", type_=_ORDERS.c.created_at.type),
        )
        .order_by(_ORDERS.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    pending = (
        select(func.count())
        .select_from(_ORDERS)
        .where(_ORDERS.c.tenant_id == bindparam("b_tenant_id"), _ORDERS.c.state == PENDING)
        .scalar_subquery()
    )
    # A CASE evaluates only the branch it takes: no look-up when joining is off, no count
    # when the cap is off or the code joins a running order.
    joined = select(
        read, case((bindparam("b_join", type_=Boolean()), joinable), else_=None).label("joined_id")
    ).cte("joined")
    # The code's row and what was decided about it: one row (none for an unknown tenant).
    decided = select(
        joined,
        case(
            (
                (bindparam("b_max_pending", type_=Integer()) > 0) & joined.c.joined_id.is_(None),
                pending,
            ),
            else_=None,
        ).label("pending"),
    ).cte("decided")
    fresh = (
        decided.c.tenant_disabled.is_(False)
        & (decided.c.tenant_id == bindparam("b_tenant_id"))
        & (decided.c.expires_at >= now)
    )
    within_cap = decided.c.pending.is_(None) | (
        decided.c.pending < bindparam("b_max_pending", type_=Integer())
    )
    order_ids = func.nextval(
        func.pg_get_serial_sequence(
            literal(_ORDERS.name, String()), literal(_ORDERS.c.id.name, String())
        )
    )
    bound = (
        update(_CODES)
        .values(order_id=func.coalesce(decided.c.joined_id, order_ids))
        .where(
            _CODES.c.id == decided.c.id,
            _CODES.c.order_id.is_(None),
            fresh,
            decided.c.joined_id.is_not(None) | within_cap,
        )
        .returning(_CODES.c.order_id, decided.c.joined_id.is_(None).label("created"))
        .cte("bound")
    )
    new_order = (
        insert(_ORDERS)
        .from_select(
            [
                "id",
                "tenant_id",
                "issuer",
                "algorithm",
                "challenge_type",
                "domains",
                "state",
                "attempts",
                "acme_orders",
                "next_attempt_at",
                "deadline_at",
                "created_at",
                "profile",
                "replaces_certificate_id",
            ],
            select(
                bound.c.order_id,
                bindparam("b_tenant_id", type_=Integer()),
                bindparam("b_issuer", type_=String()),
                bindparam("b_algorithm", type_=String()),
                decided.c.challenge_type,
                decided.c.domains,
                literal(PENDING),
                literal(0),
                literal(0),
                now,
                bindparam("b_deadline", type_=_ORDERS.c.deadline_at.type),
                now,
                bindparam("b_profile", type_=String()),
                bindparam("b_replaces", type_=Integer()),
            )
            .select_from(bound.join(decided, true()))
            .where(bound.c.created),
        )
        .returning(_ORDERS.c.id)
        .cte("new_order")
    )
    return (
        select(decided, bound.c.order_id.label("bound_order_id"), bound.c.created)
        .select_from(decided.outerjoin(bound, true()))
        .add_cte(new_order)
    )


# On the driver's cursor (certok.db.cursor_statements): SQLAlchemy's work around an
# execution of this statement cost more certok CPU than its round trip, once per new order.
_REDEEM = CursorStatement(_statement())
# The two-key form of PostgreSQL's advisory locks: (this namespace, the tenant's id).
_PENDING_CAP_LOCK_SPACE = 0x70656E64
_TENANT_LOCK = select(
    func.pg_advisory_xact_lock(
        literal(_PENDING_CAP_LOCK_SPACE, Integer()), bindparam("b_tenant_id", type_=Integer())
    )
)
_CODE_ORDER = select(_CODES.c.order_id).where(_CODES.c.id == bindparam("b_code_id"))


def redeem_in_one_statement(connection: Connection, terms: RedemptionTerms) -> Redemption:
    """`certok.orders.quotas.redeem_job`'s answer (a `Redemption`), in one statement on an
    autocommit connection (a second one only for a code another request bound meanwhile)."""
    row = _REDEEM.run(
        connection,
        {
            "b_tenant_id": terms.tenant_id,
            "b_code": terms.code,
            "b_algorithm": terms.algorithm,
            "b_issuer": terms.issuer,
            "b_profile": terms.order_extras.get("profile"),
            "b_replaces": terms.order_extras.get("replaces_certificate_id"),
            "b_join": terms.join_seconds > 0,
            "b_since": terms.now - dt.timedelta(seconds=terms.join_seconds),
            "b_max_pending": terms.max_pending,
            "b_now": terms.now,
            "b_deadline": terms.now + dt.timedelta(seconds=terms.deadline_seconds),
        },
    ).first()
    if row is None or row.tenant_disabled:  # None: no such tenant
        return Redemption(None, False, disabled=True)
    if row.bound_order_id is not None:
        return Redemption(row.bound_order_id, bool(row.created))
    code_row = row if row.id is not None else None
    # Unknown, foreign or expired: raises as redeem_code does.
    check_redeemable(code_row, terms.tenant_id, terms.code, lambda: terms.now)
    assert code_row is not None  # checked
    if code_row.order_id is not None:  # redeemed before
        return Redemption(code_row.order_id, False)
    if row.joined_id is None and row.pending is not None and row.pending >= terms.max_pending:
        return Redemption(None, False, refused=refusal(row.pending, terms.max_pending))
    # Fresh and within the cap, yet not bound: another request bound it first.
    winner = connection.scalar(_CODE_ORDER, {"b_code_id": code_row.id})
    if winner is None:  # pragma: no cover - the compare-and-set failed, so someone set it
        raise RuntimeError("verification code lost its order: call /v1/cert/dv again")
    return Redemption(winner, False)


def redeem_within_the_cap(connection: Connection, terms: RedemptionTerms) -> Redemption:
    """`redeem_in_one_statement` behind the tenant's advisory lock, in the caller's write
    transaction (held until it commits): the pending cap holds however many race."""
    connection.execute(_TENANT_LOCK, {"b_tenant_id": terms.tenant_id})
    return redeem_in_one_statement(connection, terms)
