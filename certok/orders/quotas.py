"""Sharing the ACME accounts between tenants: the pending cap and joined orders.

Every tenant's orders go out through the same ACME account per issuer, and the CA limits
that account (Let's Encrypt: 300 new orders per account per 3 hours). Without limits of its
own one tenant could spend the whole budget in seconds and leave every other tenant waiting
for hours. certok therefore keeps:

- **a cap on pending orders per tenant** (`tenant_max_pending_orders`), checked when a code
  is first redeemed: beyond it `apply` answers 429 saying so;
- **joined orders**: a code for exactly the names (and tenant, algorithm, issuer, challenge
  type) of an order still pending and younger than `order_join_seconds` is bound to that
  order instead of starting another: a client that retries `dv` + `apply` in a loop costs
  the CA one order, not one per loop;
- **a budget per ACME account and a cap per tenant on new ACME orders**
  (certok/orders/acme_order_budget.py).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, String, bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.engine import opened
from certok.db.models import Order, Tenant, VerificationCode
from certok.db.writes import write, write_statement
from certok.errors import RateLimited, Unauthenticated
from certok.order_states import PENDING
from certok.orders.redeem_statement import redeem_in_one_statement, redeem_within_the_cap
from certok.orders.redemption import TENANT_AND_CODE, Redemption, RedemptionTerms, refusal
from certok.orders.service import redeem_code
from certok.settings import Settings

# How long a client refused by the pending cap is asked to wait (orders finish in seconds to
# minutes; the seed asks clients to poll every 10 s).
PENDING_CAP_RETRY_AFTER_SECONDS = 10
QUEUED = "queued"

# Tables, not the mapped classes: the redemption is Core statements built once.
_ORDERS = Order.__table__
_CODES = VerificationCode.__table__
_TENANTS = Tenant.__table__

# Whether the tenant is disabled (None: no such tenant); the ACME order budget asks it too.
TENANT_DISABLED = select(_TENANTS.c.disabled).where(_TENANTS.c.id == bindparam("b_tenant_id"))
_JOINABLE = (
    select(_ORDERS.c.id)
    .where(
        _ORDERS.c.tenant_id == bindparam("b_tenant_id"),
        _ORDERS.c.state == PENDING,
        _ORDERS.c.domains == bindparam("b_domains"),
        _ORDERS.c.challenge_type == bindparam("b_challenge_type"),
        _ORDERS.c.algorithm == bindparam("b_algorithm"),
        _ORDERS.c.issuer == bindparam("b_issuer"),
        # Another profile is another certificate (lifetime, names allowed): never joined.
        _ORDERS.c.profile.is_not_distinct_from(bindparam("b_profile", type_=String())),
        _ORDERS.c.created_at >= bindparam("b_since"),
    )
    .order_by(_ORDERS.c.id.desc())
    .limit(1)
)
_BIND_CODE = update(_CODES).where(
    _CODES.c.id == bindparam("b_code_id"), _CODES.c.order_id.is_(None)
)
_PENDING_COUNT = (
    select(func.count())
    .select_from(_ORDERS)
    .where(_ORDERS.c.tenant_id == bindparam("b_tenant_id"), _ORDERS.c.state == PENDING)
)


def redeem_with_quotas(
    sessions: sessionmaker[Session],
    settings: Settings,
    *,
    tenant_id: int,
    code: str,
    algorithm: str,
    issuer: str,
    extras: Mapping[str, Any] | None = None,
    clock: Clock = utcnow,
) -> tuple[int, bool]:
    """The order for `code`, joined to a running one or created within the tenant's pending
    cap: (order id, created now). Raises RateLimited (429) at the cap, Unauthenticated for a
    tenant disabled since its token was cached, and as `redeem_code` for a bad code.

    `extras` go to the new order (`profile`, `replaces_certificate_id`, a shorter
    `deadline_seconds`: certok/api/cert_routes.py's apply_extras)."""
    order_extras = dict(extras or {})
    deadline_seconds = order_extras.pop("deadline_seconds", settings.order_deadline_seconds)
    terms = RedemptionTerms(
        tenant_id=tenant_id,
        code=code,
        algorithm=algorithm,
        issuer=issuer,
        deadline_seconds=deadline_seconds,
        order_extras=order_extras,
        max_pending=settings.tenant_max_pending_orders,
        join_seconds=settings.order_join_seconds,
        now=clock(),
    )
    if opened(sessions).reads_autocommit and terms.max_pending > 0:
        # PostgreSQL with the cap on: the statement behind the tenant's lock (redeem_statement.py).
        outcome = write(sessions, functools.partial(redeem_within_the_cap, terms=terms))
    elif opened(sessions).reads_autocommit:
        # PostgreSQL: one statement, atomic on its own (redeem_statement.py). Its one
        # possible second statement is a read.
        outcome = write_statement(sessions, functools.partial(redeem_in_one_statement, terms=terms))
    else:
        outcome = write(sessions, functools.partial(redeem_job, terms=terms))
    return redeemed(outcome)


def redeemed(outcome: Redemption) -> tuple[int, bool]:
    """(order id, created now), or the error a refused redemption answers with."""
    if outcome.disabled:
        raise Unauthenticated("this tenant is disabled: contact the operator")
    if outcome.refused is not None:
        raise RateLimited(outcome.refused, retry_after=PENDING_CAP_RETRY_AFTER_SECONDS)
    assert outcome.order_id is not None
    return outcome.order_id, outcome.created


def redeem_job(connection: Connection, terms: RedemptionTerms) -> Redemption:
    """Redeem within the tenant's caps, in the caller's write transaction."""
    tenant_id, code, now = terms.tenant_id, terms.code, terms.now
    max_pending, join_seconds = terms.max_pending, terms.join_seconds
    read = connection.execute(TENANT_AND_CODE, {"b_tenant_id": tenant_id, "b_code": code}).first()
    if read is None or read.tenant_disabled:  # None: no such tenant
        return Redemption(None, False, disabled=True)
    row = read if read.id is not None else None
    fresh = (
        row is not None
        and row.tenant_id == tenant_id
        and row.order_id is None
        and now <= row.expires_at
    )
    if row is not None and fresh:
        if join_seconds > 0:
            joined = connection.scalar(
                _JOINABLE,
                {
                    "b_tenant_id": tenant_id,
                    "b_domains": row.domains,
                    "b_challenge_type": row.challenge_type,
                    "b_algorithm": terms.algorithm,
                    "b_issuer": terms.issuer,
                    "b_profile": terms.order_extras.get("profile"),
                    "b_since": now - dt.timedelta(seconds=join_seconds),
                },
            )
            if joined is not None:
                bound = connection.execute(_BIND_CODE, {"order_id": joined, "b_code_id": row.id})
                if bound.rowcount == 1:
                    return Redemption(joined, False)
        if max_pending > 0:
            pending = connection.scalar(_PENDING_COUNT, {"b_tenant_id": tenant_id}) or 0
            if pending >= max_pending:
                return Redemption(None, False, refused=refusal(pending, max_pending))
    # Unknown, foreign, expired or already redeemed codes: redeem_code answers (or raises) as
    # it always has.
    order_id, created = redeem_code(
        connection,
        tenant_id,
        code,
        algorithm=terms.algorithm,
        issuer=terms.issuer,
        deadline_seconds=terms.deadline_seconds,
        clock=lambda: now,
        code_row=row,
        **terms.order_extras,
    )
    return Redemption(order_id, created)
