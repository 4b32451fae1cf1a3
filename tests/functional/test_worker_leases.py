"""Leases: the worker's claim, and the driver's step handing a lease back.

The claim takes due orders with a free lease, many in one compare-and-set UPDATE; it runs
here on SQLite and PostgreSQL, through the batched `UPDATE ... RETURNING` and through the
one-UPDATE-per-order path kept for databases that cannot return the rows they changed. A
step given `hold_lease_for` releases the lease in its own save when its next attempt is
further away than that, and keeps it otherwise (and always, without `hold_lease_for`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from certok.assembly import standard_solvers
from certok.db.engine import transaction
from certok.db.models import Order
from certok.order_states import ISSUED, PENDING
from certok.orders.accounts import AccountRegistry
from certok.orders.driver import OrderDriver
from certok.orders.worker import LEASE_SECONDS, Worker
from certok.persistence import Store
from certok.settings import IssuerSettings, Settings
from certok.tenants import service as tenants
from tests.functional.pebble_fixture import PebbleInstance, pebble_server  # noqa: F401
from tests.kit.rows import order_row

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
ME = "node-a"
OTHER = "node-b"


def _worker(store: Store, tmp_path: Path) -> Worker:
    # No step runs here: the driver only has to exist. Nothing in it talks to a CA or DNS.
    settings = Settings(data_dir=tmp_path, resolvers=["127.0.0.1:9"])
    driver = OrderDriver(
        store.sessions,
        settings,
        store.box,
        AccountRegistry(store.sessions, settings, store.box),
        lambda *_: None,
        worker_id=ME,
        solvers=standard_solvers(settings),
        clock=lambda: NOW,
    )
    return Worker(
        store.sessions, driver, worker_id=ME, threads=1, poll_seconds=1.0, clock=lambda: NOW
    )


def _add_orders(store: Store, rows: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Orders by name; each row's values override a due, unleased pending order."""
    ids = {}
    with transaction(store.sessions) as session:
        tenant = tenants.create_tenant(session, "claims")
        for name, values in rows.items():
            defaults: dict[str, Any] = {
                "state": PENDING,
                "issuer": "letsencrypt",
                "next_attempt_at": NOW - dt.timedelta(seconds=10),
            }
            order = Order(
                **order_row(
                    tenant.id,
                    NOW - dt.timedelta(minutes=1),
                    domains=f"{name}.customer.test",
                    deadline_at=NOW + dt.timedelta(days=1),
                    **(defaults | values),
                )
            )
            session.add(order)
            session.flush()
            ids[name] = order.id
    return ids


def _leases(store: Store) -> dict[int, tuple[str | None, dt.datetime | None]]:
    with store.sessions() as session:
        rows = session.execute(select(Order.id, Order.lease_owner, Order.lease_until))
        return {row.id: (row.lease_owner, row.lease_until) for row in rows}


@pytest.fixture
def statements(store: Store) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    yield seen
    event.remove(store.engine, "before_cursor_execute", record)


@pytest.mark.parametrize("returning", [True, False], ids=["update-returning", "one-by-one"])
def test_claim_takes_due_free_orders_oldest_first_and_nothing_else(
    store: Store,
    tmp_path: Path,
    statements: list[str],
    monkeypatch: pytest.MonkeyPatch,
    returning: bool,
) -> None:
    if not returning:
        monkeypatch.setattr(store.engine.dialect, "update_returning", False)
    ids = _add_orders(
        store,
        {
            "oldest": {"next_attempt_at": NOW - dt.timedelta(minutes=5)},
            "due": {},
            "expired-lease": {"lease_owner": OTHER, "lease_until": NOW - dt.timedelta(seconds=1)},
            "busy-here": {"next_attempt_at": NOW - dt.timedelta(minutes=9)},
            "leased-elsewhere": {
                "lease_owner": OTHER,
                "lease_until": NOW + dt.timedelta(seconds=30),
            },
            "not-due": {"next_attempt_at": NOW + dt.timedelta(seconds=5)},
            "issued": {"state": ISSUED},
        },
    )
    worker = _worker(store, tmp_path)
    # This worker drives it already (its lease may even have been handed back a moment ago).
    worker._busy.add(ids["busy-here"])

    statements.clear()
    first = claimed_ids(worker, 1)
    assert first == [ids["oldest"]]
    rest = claimed_ids(worker, 10)
    assert sorted(rest) == sorted([ids["due"], ids["expired-lease"]])
    assert claimed_ids(worker, 10) == []

    leases = _leases(store)
    until = NOW + dt.timedelta(seconds=LEASE_SECONDS)
    for name in ("oldest", "due", "expired-lease"):
        assert leases[ids[name]] == (ME, until), name
    assert leases[ids["leased-elsewhere"]][0] == OTHER
    for name in ("busy-here", "not-due", "issued"):
        assert leases[ids[name]] == (None, None), name
    updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    # Batched: one UPDATE per claim that found something; otherwise one per order.
    assert len(updates) == (2 if returning else 3)


def test_a_batch_claim_skips_rows_another_node_leased_after_the_lookup(
    store: Store, tmp_path: Path
) -> None:
    """The UPDATE re-checks each row: a lease another node commits between the worker's
    lookup and its UPDATE stays that node's, and the row is not reported as claimed."""
    ids = _add_orders(store, {"raced": {}, "free": {}})
    worker = _worker(store, tmp_path)

    raced: list[bool] = []

    def lease_raced_elsewhere(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE") and not raced:
            raced.append(True)
            with store.engine.connect() as other:
                other.execute(
                    Order.__table__.update()
                    .where(Order.__table__.c.id == ids["raced"])
                    .values(lease_owner=OTHER, lease_until=NOW + dt.timedelta(seconds=30))
                )
                other.commit()

    event.listen(store.engine, "before_cursor_execute", lease_raced_elsewhere)
    try:
        claimed = claimed_ids(worker, 10)
    finally:
        event.remove(store.engine, "before_cursor_execute", lease_raced_elsewhere)
    assert raced == [True]
    assert claimed == [ids["free"]]
    assert _leases(store)[ids["raced"]][0] == OTHER


# Retries follow certok/orders/schedule.py: the first comes 1 s later.
FIRST_RETRY_SECONDS = 1.0


@pytest.mark.parametrize(
    ("hold_lease_for", "kept"),
    [(None, True), (FIRST_RETRY_SECONDS, True), (FIRST_RETRY_SECONDS / 2, False)],
    ids=["no-hold", "retry-within-hold", "retry-beyond-hold"],
)
def test_a_step_hands_the_lease_back_only_when_the_next_attempt_is_beyond_the_hold(
    store: Store, tmp_path: Path, pebble: PebbleInstance, hold_lease_for: float | None, kept: bool
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        resolvers=["127.0.0.1:9"],
        issuers={
            "pebble": IssuerSettings(
                directory=pebble.directory_url, ca_bundle=Path(pebble.ca_bundle)
            )
        },
        default_issuer="pebble",
    )
    refusal = "n0.customer.test is not delegated to this tenant"
    driver = OrderDriver(
        store.sessions,
        settings,
        store.box,
        AccountRegistry(store.sessions, settings, store.box),
        lambda *_: refusal,  # the ownership check fails once: a retry, and no ACME order
        worker_id=ME,
        solvers=standard_solvers(settings),
        clock=lambda: NOW,
    )
    lease_until = NOW + dt.timedelta(seconds=LEASE_SECONDS)
    ids = _add_orders(
        store, {"n0": {"issuer": "pebble", "lease_owner": ME, "lease_until": lease_until}}
    )

    delay = driver.step(ids["n0"], hold_lease_for=hold_lease_for)

    assert delay == FIRST_RETRY_SECONDS
    assert _leases(store)[ids["n0"]] == ((ME, lease_until) if kept else (None, None))
    with store.sessions() as session:
        order = session.get(Order, ids["n0"])
        assert order is not None and order.state == PENDING
        assert order.attempts == 1 and order.reason is not None and refusal in order.reason
        assert order.next_attempt_at == NOW + dt.timedelta(seconds=FIRST_RETRY_SECONDS)
        assert order.acme_order_url is None


def claimed_ids(worker: Worker, limit: int) -> list[int]:
    """The ids of the orders one claim of the worker took (its snapshots aside)."""
    return [order_id for order_id, _ in worker._claim(limit)]


def test_a_finished_drive_looks_for_work_at_once_only_when_due_orders_were_left_behind(
    store: Store, tmp_path: Path
) -> None:
    """A look for work that took every due order leaves nothing for a freed place: the drive
    that ends does not look again (one read per finished order saved); new orders wake the
    worker themselves. One that left due orders behind, or failed, makes it look at once."""
    _add_orders(store, {f"n{i}": {} for i in range(3)})
    worker = _worker(store, tmp_path)
    wakes: list[int] = []
    worker.wake = lambda: wakes.append(1)  # type: ignore[method-assign]
    worker._step = lambda *_: None  # every drive finishes in one step

    async def drive_one() -> None:
        worker._busy.add(-1)
        await worker._drive(-1, None)

    async def scenario() -> list[int]:
        seen = []
        assert len(worker._claim(2)) == 2  # three due, two places: one left behind
        await drive_one()
        seen.append(len(wakes))
        assert len(worker._claim(5)) == 1  # the last one: nothing left behind
        await drive_one()
        seen.append(len(wakes))
        worker._step = functools.partial(_raise, RuntimeError("boom"))
        await drive_one()  # an unexpected error hands the order back: due again now
        seen.append(len(wakes))
        return seen

    assert asyncio.run(scenario()) == [1, 1, 2]
    worker.stop()


def _raise(error: Exception, *_: Any) -> None:
    raise error
