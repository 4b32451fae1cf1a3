"""A verification code starts one order, however many `apply` calls race for it, on SQLite and
on PostgreSQL (where the calls really run at once)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from certok.db.engine import transaction
from certok.db.models import Order
from certok.errors import CodeExpired, NotFound
from certok.order_states import PENDING
from certok.orders.codes import issue_code
from certok.orders.service import redeem_code, view_order
from certok.persistence import Store
from certok.tenants import service as tenants

RACERS = 12


def _tenant_and_code(store: Store, ttl: int = 60) -> tuple[int, int, str]:
    with transaction(store.sessions) as session:
        alpha = tenants.create_tenant(session, "alpha").id
        beta = tenants.create_tenant(session, "beta").id
        code = issue_code(session, alpha, "dns", ["a.customer.test", "*.a.customer.test"], ttl)
    return alpha, beta, code


def _redeem(store: Store, tenant_id: int, code: str) -> tuple[int, bool]:
    with transaction(store.sessions) as session:
        return redeem_code(
            session, tenant_id, code, algorithm="RSA", issuer="letsencrypt", deadline_seconds=600
        )


def test_racing_redeems_make_one_order(store: Store) -> None:
    alpha, _, code = _tenant_and_code(store)
    start = threading.Barrier(RACERS)

    def race(_: int) -> tuple[int, bool]:
        start.wait()
        return _redeem(store, alpha, code)

    with ThreadPoolExecutor(RACERS) as pool:
        results = list(pool.map(race, range(RACERS)))
    assert len({order_id for order_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with store.sessions() as session:
        assert session.scalar(select(func.count(Order.id))) == 1
        view = view_order(session, results[0][0], store.box)
    assert (view.status, view.issuer, view.domains) == (
        PENDING,
        "letsencrypt",
        "a.customer.test,*.a.customer.test",
    )


def test_another_tenants_code_reads_as_unknown(store: Store) -> None:
    _, beta, code = _tenant_and_code(store)
    with pytest.raises(NotFound) as foreign:
        _redeem(store, beta, code)
    with pytest.raises(NotFound) as unknown:
        _redeem(store, beta, "0" * 16)
    assert str(foreign.value.message).replace(code, "X") == str(unknown.value.message).replace(
        "0" * 16, "X"
    )


def test_an_expired_code_starts_nothing(store: Store) -> None:
    alpha, _, code = _tenant_and_code(store, ttl=-1)
    with pytest.raises(CodeExpired, match="call /v1/cert/dv again"):
        _redeem(store, alpha, code)
    with store.sessions() as session:
        assert session.scalar(select(func.count(Order.id))) == 0
