"""A verification code starts one order, however many `apply` calls race for it, on SQLite and
on PostgreSQL (where the calls really run at once)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from certok.db.engine import opened, transaction
from certok.db.models import Order
from certok.errors import CodeExpired, NotFound, RateLimited, Unauthenticated
from certok.order_states import PENDING
from certok.orders.code_reads import read_codes
from certok.orders.codes import issue_code
from certok.orders.quotas import redeem_with_quotas
from certok.orders.service import redeem_code, view_order
from certok.persistence import Store
from certok.settings import Settings
from certok.tenants import service as tenants
from tests.kit.plans import (
    reads_of_table_are_guarded,
    sqlite_plans,
    sqlite_programs,
    table_root_page,
)

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


def _redeem_with_quotas(store: Store, tenant_id: int, code: str) -> tuple[int, bool]:
    """As apply redeems: the tenant's flag and the code read once, handed to redeem_code."""
    settings = Settings(data_dir=Path("/nonexistent"), tenant_max_pending_orders=0)
    return redeem_with_quotas(
        store.sessions, settings, tenant_id=tenant_id, code=code, algorithm="ECC", issuer="x"
    )


def test_apply_redeems_with_one_read_of_the_tenant_and_the_code(store: Store) -> None:
    alpha, beta, code = _tenant_and_code(store)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(" ".join(statement.split()))

    start = threading.Barrier(RACERS)

    def race(_: int) -> tuple[int, bool]:
        start.wait()
        return _redeem_with_quotas(store, alpha, code)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        first = _redeem_with_quotas(store, alpha, code)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert first[1] is True
    code_reads = [
        s for s in statements if "FROM verification_codes" in s or "JOIN verification" in s
    ]
    assert len(code_reads) == 1, statements
    assert not any(s.startswith("SELECT tenants.disabled FROM") for s in statements), statements
    # Later calls, racing, answer with the same order and start no other.
    with ThreadPoolExecutor(RACERS) as pool:
        results = list(pool.map(race, range(RACERS)))
    assert set(results) == {(first[0], False)}
    with pytest.raises(NotFound):
        _redeem_with_quotas(store, beta, code)  # another tenant's code reads as unknown
    with pytest.raises(NotFound):
        _redeem_with_quotas(store, alpha, "0" * 16)
    with transaction(store.sessions) as session:
        tenants.set_disabled(session, "alpha", True)
    with pytest.raises(Unauthenticated, match="disabled"):
        _redeem_with_quotas(store, alpha, code)


def test_apply_on_an_expired_code_starts_nothing(store: Store) -> None:
    alpha, _, code = _tenant_and_code(store, ttl=-1)
    with pytest.raises(CodeExpired, match="call /v1/cert/dv again"):
        _redeem_with_quotas(store, alpha, code)
    with store.sessions() as session:
        assert session.scalar(select(func.count(Order.id))) == 0


def test_a_polled_codes_read_takes_no_table_page_of_the_code_or_the_certificate(
    store: Store,
) -> None:
    # apply's read of a polled code (one per cache miss) finds the code's columns and the
    # certificate record's in indexes: at a million orders each table page is a page read.
    if store.engine.dialect.name != "sqlite":
        pytest.skip("the query plan is read from SQLite's EXPLAIN QUERY PLAN")
    alpha, _, code = _tenant_and_code(store)
    _redeem(store, alpha, code)

    def read() -> None:
        with opened(store.sessions).read_connection() as connection:
            [found] = read_codes(connection, [(alpha, code)], store.box)
        assert found.order_id is not None

    picked = lambda sql: "FROM verification_codes" in sql  # noqa: E731
    [plan] = sqlite_plans(store.engine, picked, read)
    assert "USING INDEX ix_verification_codes_read" in plan, plan
    # The code's names (for a first redemption) are the one column outside that index: its
    # table row is sought only when they are read, and they are read only for a code without
    # an order.
    [program] = sqlite_programs(store.engine, picked, read)
    codes_table = table_root_page(store.engine, "verification_codes")
    assert reads_of_table_are_guarded(program, codes_table), program
    assert "USING COVERING INDEX ix_certificates_order_id_renew_at" in plan, plan
    assert "USING INTEGER PRIMARY KEY" in plan, plan  # the order's row: read for its columns


def test_racing_first_redemptions_keep_to_the_pending_cap(store: Store) -> None:
    """Fresh codes for different names redeemed at once: exactly `tenant_max_pending_orders`
    start orders, the rest are refused (on PostgreSQL the requests really run together)."""
    cap = 3
    with transaction(store.sessions) as session:
        alpha = tenants.create_tenant(session, "alpha").id
        codes = [
            issue_code(session, alpha, "dns", [f"n{i}.customer.test"], 60) for i in range(RACERS)
        ]
    settings = Settings(data_dir=Path("/nonexistent"), tenant_max_pending_orders=cap)
    start = threading.Barrier(RACERS)

    def race(code: str) -> bool:
        start.wait()
        try:
            redeem_with_quotas(
                store.sessions, settings, tenant_id=alpha, code=code, algorithm="ECC", issuer="x"
            )
        except RateLimited as refused:
            assert "tenant_max_pending_orders = 3" in refused.message
            return False
        return True

    with ThreadPoolExecutor(RACERS) as pool:
        started = list(pool.map(race, codes))
    assert sum(started) == cap, started
    with store.sessions() as session:
        assert session.scalar(select(func.count(Order.id))) == cap
