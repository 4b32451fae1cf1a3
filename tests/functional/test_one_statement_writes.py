"""Writes that are one statement on PostgreSQL: the claim that also loads, combined saves.

The worker's claim returns, on PostgreSQL, each taken order as its first step would load it,
in the same compare-and-set UPDATE; an order another node leased is neither taken nor
returned. A save with the answers' mark or the removal of the order's challenge material is
one statement there, run outside a transaction (`write_statement`): under a lost lease it
changes nothing at all, the records included. dns-01 material is presented in one statement
there too, only under the lease and only when every name is delegated. A place in the budget
of new ACME orders is one round trip on PostgreSQL, and reservations racing from many threads
still never take more places than there are. The same code runs on SQLite, where these are
ordinary statements in a write transaction.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from certok.assembly import standard_solvers
from certok.challenge_solver import Material, Presenter
from certok.db.engine import transaction
from certok.db.models import AcmeAccount, AcmeNewOrder, ChallengeRecord, Delegation, Order
from certok.db.writes import write_statement
from certok.errors import CertokError
from certok.orders.rows import LeaseLost, load_snapshot, present_job, save_job
from certok.persistence import Store
from certok.settings import Settings
from tests.functional.test_quotas import Clock, _budget, _count, _tenants
from tests.functional.test_worker_leases import ME, NOW, OTHER, _add_orders, _leases, _worker

AUTHZ = ["https://ca.test/authz/1", "https://ca.test/authz/2"]


def _add_records(store: Store, order_id: int) -> None:
    with transaction(store.sessions) as session:
        for index, url in enumerate(AUTHZ):
            session.add(
                ChallengeRecord(
                    order_id=order_id,
                    kind="dns-01",
                    name=f"label{index}",
                    value=f"value{index}",
                    authz_url=url,
                    created_at=NOW,
                )
            )


def _records(store: Store, order_id: int) -> dict[str, dt.datetime | None]:
    with store.sessions() as session:
        rows = session.execute(
            select(ChallengeRecord.authz_url, ChallengeRecord.answered_at).where(
                ChallengeRecord.order_id == order_id
            )
        )
        return {row.authz_url: row.answered_at for row in rows}


def _order(store: Store, order_id: int) -> Order:
    with store.sessions() as session:
        order = session.get(Order, order_id)
        assert order is not None
        return order


def test_the_claim_returns_each_taken_order_as_its_first_step_would_load_it(
    store: Store, tmp_path: Path
) -> None:
    ids = _add_orders(
        store,
        {
            "with-records": {"acme_order_url": "https://ca.test/order/1", "attempts": 2},
            "fresh": {},
            "leased-elsewhere": {
                "lease_owner": OTHER,
                "lease_until": NOW + dt.timedelta(seconds=30),
            },
        },
    )
    _add_records(store, ids["with-records"])
    worker = _worker(store, tmp_path)

    claimed = dict(worker._claim(10))

    assert sorted(claimed) == sorted([ids["with-records"], ids["fresh"]])
    with store.sessions() as session:
        loaded = {
            order_id: load_snapshot(session.connection(), order_id, ME, None)
            for order_id in claimed
        }
    for order_id, snapshot in claimed.items():
        if store.engine.dialect.name == "postgresql":
            # The lease and the load in one statement: exactly what a load reads afterwards.
            assert snapshot == loaded[order_id]
        else:
            assert snapshot is None  # SQLite: the first step loads the order
    assert loaded[ids["with-records"]] is not None
    assert loaded[ids["with-records"]].has_records  # type: ignore[union-attr]
    assert not loaded[ids["fresh"]].has_records  # type: ignore[union-attr]
    assert _leases(store)[ids["leased-elsewhere"]][0] == OTHER


def test_a_step_given_the_claims_snapshot_does_not_load_the_order(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's first step uses the claim's snapshot; an order whose snapshot the claim
    did not return (SQLite) is loaded as before. Either way the step saves under the lease."""
    ids = _add_orders(store, {"n0": {"issuer": "nowhere"}})
    worker = _worker(store, tmp_path)
    [(order_id, snapshot)] = worker._claim(1)
    loads: list[int] = []
    original = load_snapshot

    def counting_load(connection: Connection, order_id: int, *args: Any) -> Any:
        loads.append(order_id)
        return original(connection, order_id, *args)

    monkeypatch.setattr("certok.orders.driver.load_snapshot", counting_load)

    assert worker._driver.step(order_id, snapshot=snapshot) is None

    assert loads == ([] if snapshot is not None else [ids["n0"]])
    order = _order(store, order_id)
    # No account for issuer "nowhere": the order fails, and its lease is handed back.
    assert order.state == "failure" and order.lease_owner is None


def _save(store: Store, order_id: int, **kwargs: Any) -> None:
    job = functools.partial(
        save_job,
        order_id=order_id,
        worker_id=ME,
        values={"attempts": 0, "next_attempt_at": NOW + dt.timedelta(seconds=1)},
        answered_at=NOW,
        **({"answered": [], "drop_records": None} | kwargs),
    )
    write_statement(store.sessions, job)


@pytest.mark.parametrize("side", ["answered", "drop-records"])
def test_a_combined_save_under_a_lost_lease_changes_neither_the_order_nor_its_records(
    store: Store, tmp_path: Path, side: str
) -> None:
    lease_until = NOW + dt.timedelta(seconds=30)
    ids = _add_orders(
        store, {"n0": {"lease_owner": OTHER, "lease_until": lease_until, "attempts": 3}}
    )
    _add_records(store, ids["n0"])
    solver = standard_solvers(Settings(data_dir=tmp_path, resolvers=["127.0.0.1:9"]))["dns"]
    kwargs: dict[str, Any] = (
        {"answered": AUTHZ[:1]} if side == "answered" else {"drop_records": solver}
    )

    with pytest.raises(LeaseLost):
        _save(store, ids["n0"], **kwargs)

    assert _records(store, ids["n0"]) == {url: None for url in AUTHZ}
    assert _order(store, ids["n0"]).attempts == 3
    assert _leases(store)[ids["n0"]] == (OTHER, lease_until)


@pytest.mark.parametrize("side", ["answered", "drop-records"])
def test_a_combined_save_under_the_lease_saves_the_order_and_its_records_together(
    store: Store, tmp_path: Path, side: str
) -> None:
    ids = _add_orders(
        store,
        {
            "n0": {"lease_owner": ME, "lease_until": NOW + dt.timedelta(seconds=30)},
            "other": {},
        },
    )
    _add_records(store, ids["n0"])
    _add_records(store, ids["other"])
    solver = standard_solvers(Settings(data_dir=tmp_path, resolvers=["127.0.0.1:9"]))["dns"]
    kwargs: dict[str, Any] = (
        {"answered": AUTHZ[:1]} if side == "answered" else {"drop_records": solver}
    )

    _save(store, ids["n0"], **kwargs)

    expected = {AUTHZ[0]: NOW, AUTHZ[1]: None} if side == "answered" else {}
    assert _records(store, ids["n0"]) == expected
    assert _records(store, ids["other"]) == {url: None for url in AUTHZ}
    assert _order(store, ids["n0"]).next_attempt_at == NOW + dt.timedelta(seconds=1)


def test_a_one_statement_write_is_committed_when_it_returns(store: Store) -> None:
    """On PostgreSQL the statement runs outside a transaction (no BEGIN or COMMIT round
    trip): the connection is idle, not in a transaction, right after it. Elsewhere the job
    runs in a write transaction, committed before `write_statement` returns."""
    ids = _add_orders(store, {"n0": {}})
    seen: list[bool] = []

    def job(connection: Connection) -> int:
        count = connection.execute(
            update(Order).where(Order.id == ids["n0"]).values(attempts=7)
        ).rowcount
        if connection.dialect.name == "postgresql":
            pgconn = connection.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
            seen.append(pgconn.transaction_status == 0)  # psycopg: TransactionStatus.IDLE
        return count

    assert write_statement(store.sessions, job) == 1

    assert _order(store, ids["n0"]).attempts == 7
    assert seen == ([True] if store.engine.dialect.name == "postgresql" else [])


def test_reservations_racing_from_many_threads_take_exactly_the_budget(
    store: Store, tmp_path: Path
) -> None:
    """Each reservation reads the ledger only once it holds the account row's lock: of 24
    released at once (each thread with its own connection), exactly the account's 3 places
    are taken, whoever wins them, and the others are told to wait."""
    ids = _tenants(store, *(f"t{i}" for i in range(24)))
    with transaction(store.sessions) as session:
        session.add(
            AcmeAccount(
                issuer="letsencrypt",
                directory_url="https://ca.test/dir",
                key_encrypted=b"key",
                created_at=NOW,
            )
        )
    clock = Clock()
    start = threading.Barrier(8)

    def reserve(index: int) -> bool:
        # A budget per thread: a node of its own, which knows nothing of the others' waits.
        budget = _budget(store, tmp_path, clock)
        if index < 8:
            start.wait()
        tenant_id = ids[f"t{index}"]
        return budget.reserve(order_id=index, tenant_id=tenant_id, issuer="letsencrypt") is None

    with ThreadPoolExecutor(8) as pool:
        granted = list(pool.map(reserve, range(24)))

    assert granted.count(True) == 3
    assert _count(store, AcmeNewOrder, AcmeNewOrder.issuer == "letsencrypt") == 3


def _present(store: Store, tmp_path: Path, order_id: int, material: list[Material]) -> None:
    solver = standard_solvers(Settings(data_dir=tmp_path, resolvers=["127.0.0.1:9"]))["dns"]
    with store.sessions() as session:
        tenant_id = session.scalar(select(Order.tenant_id).where(Order.id == order_id))
    assert tenant_id is not None
    presenter = Presenter(order_id, tenant_id, ME, NOW)
    job = functools.partial(
        present_job, solver=solver, presenter=presenter, material=material, replaced_authz=[]
    )
    write_statement(store.sessions, job)


def _delegate(store: Store, order_id: int, base_name: str, label: str) -> None:
    with transaction(store.sessions) as session:
        tenant_id = session.scalar(select(Order.tenant_id).where(Order.id == order_id))
        assert tenant_id is not None
        session.add(
            Delegation(tenant_id=tenant_id, base_name=base_name, label=label, created_at=NOW)
        )


# A wildcard and its apex: two authorizations, two TXT values under one delegated label.
WILDCARD_AND_APEX = [
    Material("w0.customer.test", AUTHZ[0], "token0", "value0"),
    Material("w0.customer.test", AUTHZ[1], "token1", "value1"),
]


def _stored(store: Store, order_id: int) -> list[tuple[str, str, str, dt.datetime, Any]]:
    with store.sessions() as session:
        rows = session.execute(
            select(
                ChallengeRecord.name,
                ChallengeRecord.value,
                ChallengeRecord.authz_url,
                ChallengeRecord.created_at,
                ChallengeRecord.answered_at,
            )
            .where(ChallengeRecord.order_id == order_id)
            .order_by(ChallengeRecord.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_dns_material_is_presented_under_the_lease_at_the_delegated_label(
    store: Store, tmp_path: Path
) -> None:
    ids = _add_orders(
        store, {"n0": {"lease_owner": ME, "lease_until": NOW + dt.timedelta(seconds=30)}}
    )
    _delegate(store, ids["n0"], "w0.customer.test", "0123456789abcdef")

    _present(store, tmp_path, ids["n0"], WILDCARD_AND_APEX)

    assert _stored(store, ids["n0"]) == [
        ("0123456789abcdef", "value0", AUTHZ[0], NOW, None),
        ("0123456789abcdef", "value1", AUTHZ[1], NOW, None),
    ]


def test_dns_material_is_not_presented_under_a_lost_lease(store: Store, tmp_path: Path) -> None:
    ids = _add_orders(
        store, {"n0": {"lease_owner": OTHER, "lease_until": NOW + dt.timedelta(seconds=30)}}
    )
    _delegate(store, ids["n0"], "w0.customer.test", "0123456789abcdef")

    with pytest.raises(LeaseLost):
        _present(store, tmp_path, ids["n0"], WILDCARD_AND_APEX)

    assert _stored(store, ids["n0"]) == []


def test_dns_material_for_a_name_without_delegation_is_refused_whole(
    store: Store, tmp_path: Path
) -> None:
    ids = _add_orders(
        store, {"n0": {"lease_owner": ME, "lease_until": NOW + dt.timedelta(seconds=30)}}
    )
    _delegate(store, ids["n0"], "w0.customer.test", "0123456789abcdef")
    material = [*WILDCARD_AND_APEX, Material("n9.customer.test", AUTHZ[0] + "9", "t9", "v9")]

    with pytest.raises(CertokError, match=r"n9\.customer\.test has no delegation"):
        _present(store, tmp_path, ids["n0"], material)

    assert _stored(store, ids["n0"]) == []
