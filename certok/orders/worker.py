"""The worker: claims due orders with a lease and drives them, one step at a time.

Claiming is a compare-and-set UPDATE (`... WHERE lease expired`), which is safe on SQLite
and on PostgreSQL with several nodes. Each claimed order is an asyncio task that runs its
blocking steps (database, CA) in the thread pool and waits between them on the event loop,
so a few threads drive hundreds of orders in flight. While a step says the next one is due
soon, the task keeps the order (and its lease) instead of handing it back: that keeps an
issuance on a fast CA well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from certok.clock import Clock, utcnow
from certok.db.engine import transaction
from certok.db.models import Order
from certok.orders.driver import LeaseLost, OrderDriver
from certok.orders.service import PENDING

log = logging.getLogger(__name__)
T = TypeVar("T")

LEASE_SECONDS = 60
# Keep driving an order in the same thread while its next step is at most this far away.
INLINE_WAIT_SECONDS = 2.0


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
        on_order_finished: Callable[[int], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._sessions = session_factory
        self._driver = driver
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

    def release_own_leases(self) -> int:
        """At start: leases held under our id belong to a previous run of this node that died."""
        with transaction(self._sessions) as session:
            result = session.execute(
                update(Order)
                .where(Order.lease_owner == self._worker_id, Order.state == PENDING)
                .values(lease_owner=None, lease_until=None)
            )
            return result.rowcount

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
                    for order_id in claimed:
                        with self._busy_lock:
                            self._busy.add(order_id)
                        task = asyncio.create_task(self._drive(order_id))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("worker: claiming orders failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_seconds)
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
    def _claim(self, limit: int) -> list[int]:
        now = self._clock()
        with self._busy_lock:
            busy = set(self._busy)
        with self._sessions() as session:
            candidates = session.scalars(
                select(Order.id)
                .where(
                    Order.state == PENDING,
                    Order.next_attempt_at <= now,
                    or_(Order.lease_until.is_(None), Order.lease_until < now),
                )
                .order_by(Order.next_attempt_at)
                .limit(limit + len(busy))
            ).all()
        claimed: list[int] = []
        for order_id in candidates:
            if order_id in busy or len(claimed) >= limit:
                continue
            if self._take_lease(order_id, now):
                claimed.append(order_id)
        return claimed

    def _take_lease(self, order_id: int, now: dt.datetime) -> bool:
        with transaction(self._sessions) as session:
            result = session.execute(
                update(Order)
                .where(
                    Order.id == order_id,
                    Order.state == PENDING,
                    or_(Order.lease_until.is_(None), Order.lease_until < now),
                )
                .values(
                    lease_owner=self._worker_id,
                    lease_until=now + dt.timedelta(seconds=LEASE_SECONDS),
                )
            )
            return result.rowcount == 1

    def _extend_lease(self, order_id: int) -> bool:
        until = self._clock() + dt.timedelta(seconds=LEASE_SECONDS)
        with transaction(self._sessions) as session:
            result = session.execute(
                update(Order)
                .where(Order.id == order_id, Order.lease_owner == self._worker_id)
                .values(lease_until=until)
            )
            return result.rowcount == 1

    def _release_lease(self, order_id: int) -> None:
        with transaction(self._sessions) as session:
            session.execute(
                update(Order)
                .where(Order.id == order_id, Order.lease_owner == self._worker_id)
                .values(lease_owner=None, lease_until=None)
            )

    # --- driving -------------------------------------------------------------------------------
    async def _drive(self, order_id: int) -> None:
        lease_checked = time.monotonic()
        try:
            while not self._stopping.is_set():
                delay = await self._in_pool(self._driver.step, order_id)
                if delay is None:
                    if self._on_finished is not None:
                        self._on_finished(order_id)
                    return
                if delay > INLINE_WAIT_SECONDS:
                    await self._in_pool(self._release_lease, order_id)
                    return
                # Renew the lease well before it runs out, not on every step.
                if time.monotonic() - lease_checked > LEASE_SECONDS / 3:
                    if not await self._in_pool(self._extend_lease, order_id):
                        return
                    lease_checked = time.monotonic()
                await asyncio.sleep(max(delay, 0))
        except LeaseLost:
            log.warning("order %s: lease lost to another worker; leaving it", order_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("order %s: unexpected error; it will be retried", order_id)
            with contextlib.suppress(Exception):
                await self._in_pool(self._release_lease, order_id)
        finally:
            with self._busy_lock:
                self._busy.discard(order_id)
            self.wake()
