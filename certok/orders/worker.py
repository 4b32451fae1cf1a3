"""The worker: claims due orders with a lease and drives them, one step at a time.

Claiming is a compare-and-set UPDATE (`... WHERE lease expired`), which is safe on SQLite
and on PostgreSQL with several nodes. Each claimed order is an asyncio task that runs its
blocking steps (database, CA) in the thread pool and waits between them on the event loop,
so a few threads drive hundreds of orders in flight. While a step says the next one is due
soon, the task keeps the order (and its lease) instead of handing it back: that keeps an
issuance on a fast CA well under a second.

Statements are Core on the transaction's connection (no ORM unit of work). Due orders are
claimed in one `UPDATE ... WHERE id IN (...) AND lease free RETURNING id` where the database
can return the rows it changed (PostgreSQL; SQLite from 3.35), one UPDATE per order elsewhere;
a lease is handed back by the driver's last save of a step when the task lets the order go.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.models import Order
from certok.db.writes import write_statement
from certok.errors import Unavailable
from certok.order_states import PENDING
from certok.orders.driver import OrderDriver
from certok.orders.finished_row import FinishedRow
from certok.orders.rows import SNAPSHOT_COLUMNS, LeaseLost, OrderSnapshot, snapshot_of

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE_SECONDS = 60
ORDERS = Order.__table__
# Keep driving an order in the same thread while its next step is at most this far away.
INLINE_WAIT_SECONDS = 2.0
# Under a backlog, tenants take turns for batches of at least this fraction of the places.
FAIR_BATCH_FRACTION = 8


class Worker:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        driver: OrderDriver,
        *,
        worker_id: str,
        threads: int,
        poll_seconds: float,
        max_in_flight: int = 256,
        on_order_finished: Callable[[int, FinishedRow | None], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._sessions = session_factory
        self._driver = driver
        # The driver's save hands the lease back when the next step is beyond the inline wait.
        self._step = functools.partial(_step, driver, INLINE_WAIT_SECONDS)
        self._worker_id = worker_id
        self._threads = threads
        self._max_in_flight = max_in_flight
        self._poll_seconds = poll_seconds
        self._on_finished = on_order_finished
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="certok-order")
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fair_at = -float("inf")  # monotonic time of the last round-robin claim
        # Whether the last look for work left due orders it had no place for: only then does
        # an order that ends its drive look again at once (its place goes to one of them).
        # Otherwise the next look is at the next wake (a new order) or poll; orders handed
        # back with a later next attempt are not due before that anyway.
        self._more_due = True
        # time.monotonic() of the last look for work that reached the database (/readyz).
        self.heartbeat: float | None = None

    def release_own_leases(self) -> int:
        """At start: leases held under our id belong to a previous run of this node that died."""
        job = functools.partial(_release_all_job, worker_id=self._worker_id)
        return write_statement(self._sessions, job)

    def wake(self) -> None:
        """Look for due orders now (thread-safe; the API calls it after recording an order)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not self._stopping.is_set():
            try:
                free = self._max_in_flight - len(self._busy)
                if free > 0:
                    claimed = await self._in_pool(self._claim, free)
                    for order_id, snapshot in claimed:
                        with self._busy_lock:
                            self._busy.add(order_id)
                        task = asyncio.create_task(self._drive(order_id, snapshot))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                else:
                    self._more_due = True  # not looked: a freed place looks at once
                self.heartbeat = time.monotonic()
            except Unavailable as error:  # a passing shortage: no traceback to read
                self._more_due = True
                log.warning("worker: claiming orders failed: %s", error.message)
            except Exception:
                self._more_due = True
                log.exception("worker: claiming orders failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()
            self._wake.clear()

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        for task in list(self._tasks):
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, function, *args)

    # --- claiming ----------------------------------------------------------------------------
    def _claim(self, limit: int) -> list[tuple[int, OrderSnapshot | None]]:
        now = self._clock()
        with self._busy_lock:
            busy = set(self._busy)
        with self._sessions() as session:
            connection = session.connection()
            # The most overdue first, one more than we can take: an index walk.
            oldest = {"b_now": now, "b_limit": limit + len(busy) + 1}
            due = [i for i in connection.execute(_DUE, oldest).scalars() if i not in busy]
            self._more_due = len(due) > limit
            if len(due) > limit:
                # More are due than we take: tenants take turns. That query reads every due
                # order, so under a lasting backlog it runs for a batch of free places, or
                # once per poll interval, not for each order that finishes.
                fair_batch = max(1, self._max_in_flight // FAIR_BATCH_FRACTION)
                if limit < fair_batch and time.monotonic() - self._fair_at < self._poll_seconds:
                    return []
                self._fair_at = time.monotonic()
                fair = {"b_now": now, "b_limit": limit + len(busy)}
                due = [i for i in connection.execute(_DUE_FAIR, fair).scalars() if i not in busy]
        wanted = due[:limit]
        if not wanted:
            return []
        # One statement where the database returns what it updated (see _claim_job).
        return write_statement(
            self._sessions,
            functools.partial(_claim_job, wanted=wanted, worker_id=self._worker_id, now=now),
        )

    def _extend_lease(self, order_id: int) -> bool:
        until = self._clock() + dt.timedelta(seconds=LEASE_SECONDS)
        job = functools.partial(
            _update_own_lease, order_id=order_id, worker_id=self._worker_id, until=until
        )
        return write_statement(self._sessions, job) == 1

    def _release_lease(self, order_id: int) -> None:
        job = functools.partial(
            _update_own_lease, order_id=order_id, worker_id=self._worker_id, until=None
        )
        write_statement(self._sessions, job)

    # --- driving -------------------------------------------------------------------------------
    async def _drive(self, order_id: int, snapshot: OrderSnapshot | None) -> None:
        """`snapshot`: the order as the claim returned it, for the first step (None: loaded)."""
        lease_checked = time.monotonic()
        try:
            while not self._stopping.is_set():
                delay = await self._in_pool(self._step, order_id, snapshot)
                # The order as this step left it, when the step could tell without a read
                # (else None: the next step loads it).
                snapshot = self._driver.take_carried(order_id)
                if delay is None:
                    # What the finishing save wrote, when this process's save ended it.
                    finished = self._driver.take_finished(order_id)
                    if self._on_finished is not None:
                        self._on_finished(order_id, finished)
                    return
                if delay > INLINE_WAIT_SECONDS:
                    return  # the step's save handed the lease back
                # Renew the lease well before it runs out, not on every step.
                if time.monotonic() - lease_checked > LEASE_SECONDS / 3:
                    if not await self._in_pool(self._extend_lease, order_id):
                        return
                    lease_checked = time.monotonic()
                await asyncio.sleep(max(delay, 0))
        except LeaseLost:
            log.warning(
                "order %s: lease lost (another worker took it over, or it was stopped); leaving it",
                order_id,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("order %s: unexpected error; it will be retried", order_id)
            with contextlib.suppress(Exception):
                await self._in_pool(self._release_lease, order_id)
            self._more_due = True  # the order is due again now
        finally:
            # Neither is kept past the drive, whatever happened.
            self._driver.take_finished(order_id)
            self._driver.take_carried(order_id)
            with self._busy_lock:
                self._busy.discard(order_id)
            if self._more_due:
                self.wake()


def _step(
    driver: OrderDriver, hold_lease_for: float, order_id: int, snapshot: OrderSnapshot | None
) -> float | None:
    return driver.step(order_id, hold_lease_for=hold_lease_for, snapshot=snapshot)


def _lease_free(now: dt.datetime | BindParameter[dt.datetime]) -> ColumnElement[bool]:
    return or_(ORDERS.c.lease_until.is_(None), ORDERS.c.lease_until < now)


# The claim loop's statements, built once (see the hot statements in certok/orders/rows.py).
_DUE = (
    select(ORDERS.c.id)
    .where(
        ORDERS.c.state == PENDING,
        ORDERS.c.next_attempt_at <= bindparam("b_now"),
        _lease_free(bindparam("b_now")),
    )
    .order_by(ORDERS.c.next_attempt_at)
    .limit(bindparam("b_limit"))
)
# When more orders are due than the worker takes, they are taken round-robin across tenants,
# each tenant's most overdue first: every tenant's first due order, then every tenant's
# second, ... So a tenant with a thousand due orders does not push another tenant's one order
# behind them all (certok/orders/acme_order_budget.py).
_DUE_RANKED = (
    select(
        ORDERS.c.id,
        ORDERS.c.next_attempt_at,
        func.row_number()
        .over(partition_by=ORDERS.c.tenant_id, order_by=(ORDERS.c.next_attempt_at, ORDERS.c.id))
        .label("turn"),
    )
    .where(
        ORDERS.c.state == PENDING,
        ORDERS.c.next_attempt_at <= bindparam("b_now"),
        _lease_free(bindparam("b_now")),
    )
    .subquery("due")
)
_DUE_FAIR = (
    select(_DUE_RANKED.c.id)
    .order_by(_DUE_RANKED.c.turn, _DUE_RANKED.c.next_attempt_at, _DUE_RANKED.c.id)
    .limit(bindparam("b_limit"))
)
_TAKE_WHERE = (
    ORDERS.c.id.in_(bindparam("b_ids", expanding=True)),
    ORDERS.c.state == PENDING,
    _lease_free(bindparam("b_now")),
)
_TAKE = update(ORDERS).where(*_TAKE_WHERE).returning(ORDERS.c.id)
# On PostgreSQL the claim returns what each order's first step would load (its snapshot):
# the lease and the load in one statement. Not on SQLite, whose RETURNING drops the table
# name from the snapshot's correlated EXISTS (it would compare challenge_records.id).
_TAKE_SNAPSHOTS = update(ORDERS).where(*_TAKE_WHERE).returning(*SNAPSHOT_COLUMNS)


# --- write jobs (module-level with plain arguments: they may run in the writer process) -------


def _release_all_job(connection: Connection, *, worker_id: str) -> int:
    return connection.execute(
        update(ORDERS)
        .where(ORDERS.c.lease_owner == worker_id, ORDERS.c.state == PENDING)
        .values(lease_owner=None, lease_until=None)
    ).rowcount


def _claim_job(
    connection: Connection, *, wanted: list[int], worker_id: str, now: dt.datetime
) -> list[tuple[int, OrderSnapshot | None]]:
    """Lease the orders of `wanted` that are still pending and free: (id, snapshot or None).

    One statement wherever the database can return the rows it updated (the Worker runs it
    with `write_statement`); one UPDATE per order elsewhere.
    """
    lease = {"lease_owner": worker_id, "lease_until": now + dt.timedelta(seconds=LEASE_SECONDS)}
    if not connection.dialect.update_returning:
        return [
            (order_id, None)
            for order_id in wanted
            if connection.execute(
                update(ORDERS)
                .where(ORDERS.c.id == order_id, ORDERS.c.state == PENDING, _lease_free(now))
                .values(lease)
            ).rowcount
            == 1
        ]
    # Compare-and-set for the whole batch: rows another node leased meanwhile (or that
    # finished) fail the WHERE and are simply not returned.
    params = {**lease, "b_ids": wanted, "b_now": now}
    taken: dict[int, OrderSnapshot | None]
    if connection.dialect.name == "postgresql":
        rows = connection.execute(_TAKE_SNAPSHOTS, params)
        taken = {row.id: snapshot_of(row, None) for row in rows}
    else:
        taken = dict.fromkeys(connection.execute(_TAKE, params).scalars())
    return [(order_id, taken[order_id]) for order_id in wanted if order_id in taken]


def _update_own_lease(
    connection: Connection, *, order_id: int, worker_id: str, until: dt.datetime | None
) -> int:
    """Extend the lease to `until`, or hand it back (None), if `worker_id` holds it."""
    values: dict[str, Any] = {"lease_until": until}
    if until is None:
        values["lease_owner"] = None
    return connection.execute(
        update(ORDERS)
        .where(ORDERS.c.id == order_id, ORDERS.c.lease_owner == worker_id)
        .values(values)
    ).rowcount
