"""The budget of new ACME orders: per ACME account and per tenant, kept in a ledger.

The CA limits each ACME account's new orders per window, and every tenant shares the
account, so certok keeps **a budget per ACME account** (`issuers.<name>.new_orders_per_window`
per `new_order_window_seconds`) and **a cap per tenant** (`tenant_acme_orders_per_window` per
`tenant_acme_order_window_seconds`) on new ACME orders, kept in a ledger (`acme_new_orders`)
written *before* each newOrder goes out, so requests in flight can never overrun them. An
order beyond either is not failed: it stays `pending` with a reason naming the limit and the
time it frees, and starts then. The worker claims due orders round-robin across tenants
(certok/orders/worker.py), so when a slot frees, tenants take turns.

The budget costs one small write job per new ACME order (not per step): one SELECT (the
tenant's state and both windows, each an index walk of at most `budget` rows) and one INSERT.
On PostgreSQL, reservations for one account queue on the account's row lock; the whole job is
then one round trip (`_reserve_postgres`), so the lock is held for the server's own work on
it, not for the client's turns between statements while every other reservation waits.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.engine import opened
from certok.db.models import AcmeAccount, AcmeNewOrder
from certok.db.writes import write, write_statement
from certok.errors import CertokError
from certok.orders.quotas import QUEUED, TENANT_DISABLED
from certok.settings import Settings

# Tables, not the mapped classes: the reservation is Core statements built once.
_LEDGER = AcmeNewOrder.__table__
_ACCOUNTS = AcmeAccount.__table__


@dataclass(frozen=True)
class BudgetWait:
    """An order must wait for a budget: until when, and why (the order's pending reason)."""

    until: dt.datetime
    reason: str


class TenantDisabled(CertokError):
    """The tenant was disabled: its orders stop."""


class AcmeOrderBudget:
    """Reserves a place in the ACME account's and the tenant's windows before a newOrder."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._clock = clock
        windows = [i.new_order_window_seconds for i in settings.issuers.values()]
        # Ledger rows older than every window count for nothing: they are deleted as we go.
        self._horizon = dt.timedelta(
            seconds=max([*windows, settings.tenant_acme_order_window_seconds])
        )
        # Budgets known to be spent until a time: orders woken before then wait again without
        # a database round trip (another node's reservations only make the truth later).
        self._spent: dict[tuple[str, str], BudgetWait] = {}
        self._lock = threading.Lock()

    def waiting(self, issuer: str, tenant_id: int) -> BudgetWait | None:
        """A wait this process already knows the order faces (no database access)."""
        now = self._clock()
        with self._lock:
            for key in (("issuer", issuer), ("tenant", str(tenant_id))):
                known = self._spent.get(key)
                if known is not None:
                    if known.until > now:
                        return known
                    del self._spent[key]
        return None

    def reserve(self, *, order_id: int, tenant_id: int, issuer: str) -> BudgetWait | None:
        """Take a place for one newOrder now (None), or say how long to wait. Raises
        TenantDisabled when the tenant was disabled."""
        known = self.waiting(issuer, tenant_id)
        if known is not None:
            return known
        issuer_settings = self._settings.issuers.get(issuer)
        issuer_budget = issuer_settings.new_orders_per_window if issuer_settings else 0
        issuer_window = issuer_settings.new_order_window_seconds if issuer_settings else 1.0
        tenant_budget = self._settings.tenant_acme_orders_per_window
        tenant_window = self._settings.tenant_acme_order_window_seconds
        if issuer_budget == 0 and tenant_budget == 0:
            return None
        now = self._clock()
        # One round trip on PostgreSQL, its own transaction (see _reserve_postgres); the
        # statements of the other path share a transaction.
        dialect = opened(self._sessions).engine.dialect
        writer = write_statement if _one_round_trip(dialect.name, dialect.driver) else write
        verdict = writer(
            self._sessions,
            functools.partial(
                _reserve_job,
                ask=_Ask(
                    issuer=issuer,
                    tenant_id=tenant_id,
                    order_id=order_id,
                    now=now,
                    issuer_budget=issuer_budget,
                    issuer_window=issuer_window,
                    tenant_budget=tenant_budget,
                    tenant_window=tenant_window,
                    horizon=self._horizon,
                ),
            ),
        )
        if verdict is None:
            return None
        kind, until = verdict
        if kind == "disabled":
            raise TenantDisabled(
                "stopped: the tenant was disabled by the operator; enable it and apply again"
            )
        at = f"{until:%Y-%m-%d %H:%M:%S} UTC"
        if kind == "issuer":
            wait = BudgetWait(
                until,
                f"{QUEUED}: the ACME account of issuer {issuer} has made "
                f"{issuer_budget} new orders in the last {_span(issuer_window)}, its budget "
                f"(issuers.{issuer}.new_orders_per_window, mirroring the CA's limit); this "
                f"order starts at {at}",
            )
            key = ("issuer", issuer)
        else:
            wait = BudgetWait(
                until,
                f"{QUEUED}: this tenant's orders have made {tenant_budget} new ACME orders "
                f"in the last {_span(tenant_window)}, the most one tenant may "
                f"(tenant_acme_orders_per_window); this order starts at {at}",
            )
            key = ("tenant", str(tenant_id))
        with self._lock:
            self._spent[key] = wait
        return wait


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _nth_newest(column: Any, value: str) -> Any:
    """created_at of the ledger row at offset `b_<value>_offset` (newest first) where `column`
    matches: the budget-th newest reservation when the offset is the budget less one."""
    return (
        select(_LEDGER.c.created_at)
        .where(column == bindparam(f"b_{value}"))
        .order_by(_LEDGER.c.created_at.desc())
        .limit(1)
        .offset(bindparam(f"b_{value}_offset"))
        .scalar_subquery()
    )


# One statement for the whole check: whether the tenant is disabled, and the budget-th newest
# reservation of the account and of the tenant (a window is full while that one is inside it).
_RESERVE_CHECK = select(
    TENANT_DISABLED.scalar_subquery(),
    _nth_newest(_LEDGER.c.issuer, "issuer"),
    _nth_newest(_LEDGER.c.tenant_id, "tenant_id"),
)
_LOCK_ACCOUNT = (
    select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.issuer == bindparam("b_issuer")).with_for_update()
)
_RESERVE = insert(_LEDGER)
_FORGET = delete(_LEDGER).where(
    _LEDGER.c.issuer == bindparam("b_issuer"), _LEDGER.c.created_at < bindparam("b_before")
)


@dataclass(frozen=True)
class _Ask:
    """One reservation asked for: the order, the moment, and both windows' budgets."""

    issuer: str
    tenant_id: int
    order_id: int
    now: dt.datetime
    issuer_budget: int
    issuer_window: float
    tenant_budget: int
    tenant_window: float
    horizon: dt.timedelta

    def windows(
        self, issuer_nth: dt.datetime | None, tenant_nth: dt.datetime | None
    ) -> tuple[_Window, _Window]:
        """Both windows for `_verdict`, with the budget-th newest reservation of each."""
        return (
            (self.issuer_budget, self.issuer_window, issuer_nth, "issuer"),
            (self.tenant_budget, self.tenant_window, tenant_nth, "tenant"),
        )


def _reserve_job(connection: Connection, *, ask: _Ask) -> tuple[str, dt.datetime] | None:
    """None and a ledger row when both windows have room; else (which limit, when it frees)."""
    if _one_round_trip(connection.dialect.name, connection.dialect.driver):
        return _reserve_postgres(connection, ask)
    issuer, tenant_id, now = ask.issuer, ask.tenant_id, ask.now
    if connection.dialect.name != "sqlite":
        # Reservations for one account queue on its row, so nodes reserving at the same moment
        # cannot both take the last place (SQLite has one writer at a time anyway).
        connection.execute(_LOCK_ACCOUNT, {"b_issuer": issuer})
    disabled, issuer_nth, tenant_nth = connection.execute(
        _RESERVE_CHECK,
        {
            "b_tenant_id": tenant_id,
            "b_issuer": issuer,
            "b_issuer_offset": max(ask.issuer_budget - 1, 0),
            "b_tenant_id_offset": max(ask.tenant_budget - 1, 0),
        },
    ).one()
    refused, stale = _verdict(disabled, now, *ask.windows(issuer_nth, tenant_nth))
    if refused is not None:
        return refused
    if stale:
        connection.execute(_FORGET, {"b_issuer": issuer, "b_before": now - ask.horizon})
    connection.execute(
        _RESERVE,
        {"issuer": issuer, "tenant_id": tenant_id, "order_id": ask.order_id, "created_at": now},
    )
    return None


def _one_round_trip(dialect: str, driver: str) -> bool:
    """Whether the reservation is `_reserve_postgres` (psycopg 3 sends its simple query)."""
    return dialect == "postgresql" and driver == "psycopg"


# (budget, window in seconds, created_at of the budget-th newest reservation or None, kind)
_Window = tuple[int, float, dt.datetime | None, str]


def _verdict(
    disabled: bool | None, now: dt.datetime, *windows: _Window
) -> tuple[tuple[str, dt.datetime] | None, bool]:
    """(which limit refuses and when it frees, or None; whether older ledger rows may go)."""
    if disabled is None or disabled:  # None: no such tenant
        return ("disabled", now), False
    stale = False
    for budget, window, nth, kind in windows:
        if budget <= 0 or nth is None:
            continue
        frees = nth + dt.timedelta(seconds=window)
        if frees > now:
            return (kind, frees), False
        stale = True  # a full window's worth of rows, and older ones: time to forget some
    return None, stale


# The reservation on PostgreSQL, sent as one query string of two statements, which the server
# runs as one transaction: the account row's lock, then the check, the forgetting of stale
# rows and the ledger row, in one statement that takes its snapshot once the lock is held (so
# it sees every reservation committed before it). Its room / stale tests are `_verdict`'s.
_RESERVE_POSTGRES = """
SELECT id FROM acme_accounts WHERE issuer = %(issuer)s FOR UPDATE;
WITH checked AS (
    SELECT
        (SELECT disabled FROM tenants WHERE id = %(tenant_id)s) AS disabled,
        (SELECT created_at FROM acme_new_orders WHERE issuer = %(issuer)s
         ORDER BY created_at DESC LIMIT 1 OFFSET %(issuer_offset)s) AS issuer_nth,
        (SELECT created_at FROM acme_new_orders WHERE tenant_id = %(tenant_id)s
         ORDER BY created_at DESC LIMIT 1 OFFSET %(tenant_offset)s) AS tenant_nth
), verdict AS (
    SELECT
        disabled, issuer_nth, tenant_nth,
        disabled IS FALSE
        AND NOT (%(issuer_budget)s > 0 AND issuer_nth IS NOT NULL
                 AND issuer_nth + make_interval(secs => %(issuer_window)s) > %(now)s)
        AND NOT (%(tenant_budget)s > 0 AND tenant_nth IS NOT NULL
                 AND tenant_nth + make_interval(secs => %(tenant_window)s) > %(now)s) AS room,
        (%(issuer_budget)s > 0 AND issuer_nth IS NOT NULL)
        OR (%(tenant_budget)s > 0 AND tenant_nth IS NOT NULL) AS stale
    FROM checked
), forgotten AS (
    DELETE FROM acme_new_orders
    WHERE issuer = %(issuer)s AND created_at < %(before)s
      AND (SELECT room AND stale FROM verdict)
), reserved AS (
    INSERT INTO acme_new_orders (issuer, tenant_id, order_id, created_at)
    SELECT %(issuer)s, %(tenant_id)s, %(order_id)s, %(now)s FROM verdict WHERE room
    RETURNING id
)
SELECT disabled, issuer_nth, tenant_nth, (SELECT count(*) FROM reserved) FROM verdict
"""


def _reserve_postgres(connection: Connection, ask: _Ask) -> tuple[str, dt.datetime] | None:
    """`_reserve_job` in one round trip. psycopg sends a query with parameters as one
    statement (the extended protocol): a cursor that binds them itself sends the two
    statements as one simple query. Outside a transaction (`write_statement`) the server
    commits them together; inside one, they are part of it."""
    import psycopg  # the `postgres` extra: only a PostgreSQL database gets here

    naive = ask.now.astimezone(dt.UTC).replace(tzinfo=None)  # the columns are UTC, no zone
    params = {
        "issuer": ask.issuer,
        "tenant_id": ask.tenant_id,
        "order_id": ask.order_id,
        "now": naive,
        "before": naive - ask.horizon,
        "issuer_budget": ask.issuer_budget,
        "issuer_window": float(ask.issuer_window),
        "issuer_offset": max(ask.issuer_budget - 1, 0),
        "tenant_budget": ask.tenant_budget,
        "tenant_window": float(ask.tenant_window),
        "tenant_offset": max(ask.tenant_budget - 1, 0),
    }
    dbapi = connection.connection.dbapi_connection
    assert isinstance(dbapi, psycopg.Connection)  # the dialect's driver, checked by the caller
    with psycopg.ClientCursor(dbapi) as cursor:
        cursor.execute(_RESERVE_POSTGRES, params)
        cursor.nextset()
        row = cursor.fetchone()
    assert row is not None
    disabled, issuer_nth, tenant_nth, reserved = row
    if reserved:
        return None
    refused, _ = _verdict(disabled, ask.now, *ask.windows(_aware(issuer_nth), _aware(tenant_nth)))
    # The statement and `_verdict` test the same conditions: one refuses when the other does.
    return refused or ("issuer", ask.now)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)
