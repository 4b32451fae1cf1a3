"""What a node does with orders around a restart and while `apply` requests are held:
releasing its previous run's leases, and telling held requests about orders other processes
finished (one query for all of them), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import select

from certok.api.waiters import OrderWaiters
from certok.db.engine import transaction
from certok.db.models import Order
from certok.order_states import FAILURE, ISSUED, PENDING
from certok.orders.leases import release_node_leases
from certok.orders.service import finished_orders
from certok.persistence import Store
from certok.tenants import service as tenants
from tests.kit.rows import order_row


def _orders(store: Store, owners_and_states: list[tuple[str | None, str]]) -> list[int]:
    now = dt.datetime.now(dt.UTC)
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "leases")
        rows = [
            Order(
                **order_row(
                    tenant.id,
                    now,
                    domains="a.customer.test",
                    state=state,
                    deadline_at=now + dt.timedelta(hours=1),
                    lease_owner=owner,
                    lease_until=None if owner is None else now + dt.timedelta(minutes=1),
                )
            )
            for owner, state in owners_and_states
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows]


def _owners(store: Store, ids: list[int]) -> list[str | None]:
    with store.sessions() as session:
        owner = {
            row.id: row.lease_owner
            for row in session.execute(select(Order.id, Order.lease_owner).where(Order.id.in_(ids)))
        }
    return [owner[i] for i in ids]


def test_a_node_frees_its_own_and_its_processes_leases_only(store: Store) -> None:
    ids = _orders(
        store,
        [
            ("node-a", PENDING),
            ("node-a/1", PENDING),
            ("node-a/12", PENDING),
            ("node-a/1", ISSUED),  # finished orders are not touched
            ("node-ab", PENDING),  # another node whose name starts the same
            ("node-a-2/1", PENDING),
            ("other", PENDING),
            (None, PENDING),
        ],
    )
    assert release_node_leases(store.sessions, "node-a") == 3
    assert _owners(store, ids) == [
        None,
        None,
        None,
        "node-a/1",
        "node-ab",
        "node-a-2/1",
        "other",
        None,
    ]


def test_like_wildcards_in_a_node_name_match_only_themselves(store: Store) -> None:
    ids = _orders(store, [("n_1%/1", PENDING), ("nx1z/1", PENDING), ("n_1%", PENDING)])
    assert release_node_leases(store.sessions, "n_1%") == 2
    assert _owners(store, ids) == [None, "nx1z/1", None]


def test_finished_orders_reads_many_at_once(store: Store) -> None:
    states = [PENDING, ISSUED, FAILURE, PENDING, ISSUED]
    ids = _orders(store, [(None, state) for state in states])
    gone = max(ids) + 1000  # purged or never existed: nothing left to wait for
    with store.sessions() as session:
        assert finished_orders(session, [*ids, gone]) == [ids[1], ids[2], ids[4], gone]


def test_the_poller_wakes_held_requests_whose_order_finished_elsewhere(store: Store) -> None:
    pending, later = _orders(store, [(None, PENDING), (None, PENDING)])
    reads: list[list[int]] = []

    def read_finished(order_ids: list[int]) -> list[int]:
        reads.append(sorted(order_ids))
        with store.sessions() as session:
            return finished_orders(session, order_ids)

    async def scenario() -> tuple[bool, bool, float]:
        waiters = OrderWaiters()
        poller = asyncio.create_task(waiters.run_poller(read_finished, 0.05))
        await asyncio.sleep(0)
        assert waiters.polling
        with waiters.watch(pending) as first, waiters.watch(later) as second:
            loop = asyncio.get_running_loop()
            started = loop.time()
            # Another process finishes the first order: nothing in this one calls finished().
            await asyncio.to_thread(_set_state, store, pending, ISSUED)
            woken_first = await first.wait(30)
            elapsed = loop.time() - started
            woken_second = await second.wait(0.2)
        poller.cancel()
        return woken_first, woken_second, elapsed

    woken_first, woken_second, elapsed = asyncio.run(scenario())
    # Woken by the poller's next read (every 0.05 s), not by the wait giving up.
    assert woken_first and elapsed < 10
    assert not woken_second  # still pending: only the finished order wakes
    # One query per interval covered both held orders.
    assert [pending, later] in reads


def test_finished_in_this_process_wakes_at_once() -> None:
    async def scenario() -> tuple[bool, bool]:
        waiters = OrderWaiters()
        waiters.bind(asyncio.get_running_loop())
        with waiters.watch(7) as watch:
            # A worker thread finishes order 7 before the request even starts waiting.
            await asyncio.to_thread(waiters.finished, 7)
            early = await watch.wait(1)
            again = await watch.wait(0.05)
        return early, again

    assert asyncio.run(scenario()) == (True, False)


def _set_state(store: Store, order_id: int, state: str) -> None:
    with transaction(store.sessions) as session:
        row = session.get(Order, order_id)
        assert row is not None
        row.state = state


def test_a_node_polls_held_orders_more_often_than_it_looks_for_work(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request held in one process while another process's worker drives its order learns
    of the end from the poller: at the worker's 1 s look for work that cost it half a second
    on average, so the poller runs at `HELD_ORDERS_POLL_SECONDS` (or the worker's interval
    when that is shorter)."""
    from certok import runtime
    from certok.settings import Settings

    intervals: list[float] = []

    async def run_poller(self: OrderWaiters, read: object, poll_seconds: float) -> None:
        intervals.append(poll_seconds)

    monkeypatch.setattr(OrderWaiters, "run_poller", run_poller)

    async def start(settings: Settings) -> None:
        await runtime._poll_waiters(OrderWaiters(), store, settings)

    asyncio.run(start(Settings(worker_poll_seconds=1.0)))
    asyncio.run(start(Settings(worker_poll_seconds=0.05)))
    assert runtime.HELD_ORDERS_POLL_SECONDS < 1.0
    assert intervals == [runtime.HELD_ORDERS_POLL_SECONDS, 0.05]
