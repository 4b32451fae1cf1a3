"""Tenants sharing the ACME accounts: the pending cap, joined orders, the budgets of new ACME
orders, fair claiming, and a disabled tenant's orders (certok/orders/quotas.py).

Real databases (SQLite, and PostgreSQL when configured), the real API in process, clocks
injected: nothing here waits for a window to pass.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from certok.db.engine import transaction
from certok.db.models import AcmeNewOrder, ChallengeRecord, Order, VerificationCode
from certok.order_states import FAILURE, ISSUED, PENDING
from certok.orders.acme_order_budget import AcmeOrderBudget, TenantDisabled
from certok.orders.codes import issue_code
from certok.orders.quotas import redeem_with_quotas
from certok.persistence import Store
from certok.settings import IssuerSettings, Settings
from certok.tenants import service as tenants
from tests.functional.test_api import api_settings, assert_error, make_app
from tests.functional.test_worker_leases import ME, _worker, claimed_ids
from tests.functional.test_worker_leases import NOW as WORKER_NOW
from tests.kit.rows import order_row

NOW = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)
NAMES = ["www.example.com", "example.com"]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def _tenants(store: Store, *names: str) -> dict[str, int]:
    with transaction(store.sessions) as session:
        return {name: tenants.create_tenant(session, name).id for name in names}


def _code(store: Store, tenant_id: int, names: list[str] = NAMES, ttl: int = 60) -> str:
    with transaction(store.sessions) as session:
        return issue_code(session, tenant_id, "dns", names, ttl)


def _count(store: Store, model: Any, *where: Any) -> int:
    with store.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# --- the pending cap and joined orders, through the API -------------------------------------


@pytest.fixture
def capped(store: Store, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str], Store]]:
    settings = api_settings(tmp_path, apply_wait_seconds=0, tenant_max_pending_orders=2)
    tokens = {}
    with transaction(store.sessions) as session:
        for name in ("alpha", "beta"):
            tenants.create_tenant(session, name)
            tokens[name] = tenants.issue_token(session, name)
    app = make_app(settings, store, wake_worker=lambda: None)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, tokens, store


def _tenant_id(store: Store, name: str) -> int:
    with store.sessions() as session:
        return tenants.find_tenant(session, name).id


def test_the_pending_cap_answers_429_naming_the_limit_and_spares_other_tenants(
    capped: tuple[TestClient, dict[str, str], Store],
) -> None:
    client, tokens, store = capped
    alpha, beta = _tenant_id(store, "alpha"), _tenant_id(store, "beta")

    def apply(tenant: str, code: str) -> Any:
        return client.get(
            "/v1/cert/apply", params={"code": code}, headers={"httpsok-token": tokens[tenant]}
        )

    for i in range(2):
        answer = apply("alpha", _code(store, alpha, [f"n{i}.example.com"]))
        assert answer.json()["data"]["status"] == "pending", answer.text
    refused = _code(store, alpha, ["n2.example.com"])
    response = apply("alpha", refused)
    assert_error(response, 429, "2 orders pending", "tenant_max_pending_orders = 2")
    assert int(response.headers["retry-after"]) > 0
    assert _count(store, Order, Order.tenant_id == alpha) == 2
    # Another tenant is not held back by alpha's orders.
    answer = apply("beta", _code(store, beta, ["n0.example.com"]))
    assert answer.json()["data"]["status"] == "pending"
    # Once one of alpha's orders finished, the refused code (still within its minute) works.
    with transaction(store.sessions) as session:
        first = session.scalars(select(Order).where(Order.tenant_id == alpha)).first()
        assert first is not None
        first.state = FAILURE
    assert apply("alpha", refused).json()["data"]["status"] == "pending"
    # A code for the names of a running order joins it: no new order, so no cap to meet.
    joined = apply("alpha", _code(store, alpha, ["n2.example.com"]))
    assert joined.json()["data"]["status"] == "pending"
    assert _count(store, Order, Order.tenant_id == alpha) == 3


def test_codes_for_the_same_names_join_the_running_order_within_the_window(
    store: Store, tmp_path: Path
) -> None:
    ids = _tenants(store, "alpha", "beta")
    clock = Clock()
    settings = Settings(data_dir=tmp_path, order_join_seconds=600)

    def redeem(tenant: str, names: list[str] = NAMES, **params: str) -> tuple[int, bool]:
        choice = {"algorithm": "ECC", "issuer": "letsencrypt"} | params
        return redeem_with_quotas(
            store.sessions,
            settings,
            tenant_id=ids[tenant],
            code=_code(store, ids[tenant], names, ttl=3600),
            clock=clock,
            **choice,
        )

    first, created = redeem("alpha")
    assert created
    clock.advance(599)
    assert redeem("alpha") == (first, False)
    # Anything different starts its own order: names, their order, algorithm, issuer, tenant.
    assert redeem("alpha", ["www.example.com"])[1]
    assert redeem("alpha", list(reversed(NAMES)))[1]
    assert redeem("alpha", algorithm="RSA")[1]
    assert redeem("alpha", issuer="google")[1]
    assert redeem("beta")[1]
    # Only running orders are joined ...
    with transaction(store.sessions) as session:
        order = session.get(Order, first)
        assert order is not None
        order.state = ISSUED
    again, created = redeem("alpha")
    assert created and again != first
    # ... and only young ones.
    clock.advance(601)
    assert redeem("alpha")[1]
    # Both codes of a joined order answer that order.
    with store.sessions() as session:
        bound = session.scalars(
            select(VerificationCode.order_id).where(VerificationCode.order_id == first)
        ).all()
    assert len(bound) == 2


def test_join_seconds_zero_never_joins(store: Store, tmp_path: Path) -> None:
    ids = _tenants(store, "alpha")
    settings = Settings(data_dir=tmp_path, order_join_seconds=0)
    made = {
        redeem_with_quotas(
            store.sessions,
            settings,
            tenant_id=ids["alpha"],
            code=_code(store, ids["alpha"]),
            algorithm="ECC",
            issuer="google",
        )
        for _ in range(2)
    }
    assert len(made) == 2 and all(created for _, created in made)


# --- the budgets of new ACME orders ----------------------------------------------------------


def _budget(store: Store, tmp_path: Path, clock: Clock, **settings: Any) -> AcmeOrderBudget:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "issuers": {
            "letsencrypt": IssuerSettings(
                directory="https://ca.test/dir",
                new_orders_per_window=3,
                new_order_window_seconds=600,
            )
        },
        "tenant_acme_orders_per_window": 2,
        "tenant_acme_order_window_seconds": 300,
    }
    return AcmeOrderBudget(store.sessions, Settings(**(values | settings)), clock=clock)


def test_the_account_budget_is_never_exceeded_and_each_tenant_keeps_to_its_share(
    store: Store, tmp_path: Path
) -> None:
    ids = _tenants(store, "alpha", "beta", "gamma")
    clock = Clock()
    budget = _budget(store, tmp_path, clock)

    def reserve(tenant: str, issuer: str = "letsencrypt") -> Any:
        return budget.reserve(order_id=1, tenant_id=ids[tenant], issuer=issuer)

    assert reserve("alpha") is None
    clock.advance(10)
    assert reserve("alpha") is None
    clock.advance(10)
    # alpha has had its share: it waits until its first order leaves alpha's window ...
    wait = reserve("alpha")
    assert wait is not None and wait.until == NOW + dt.timedelta(seconds=300)
    assert "tenant_acme_orders_per_window" in wait.reason and "5 min" in wait.reason
    assert "2026-12-05 09:05:00 UTC" in wait.reason and wait.reason.startswith("queued")
    # ... while beta is served at once,
    assert reserve("beta") is None
    # and then the account's budget (3 in 10 min) is spent, for everyone.
    wait = reserve("gamma")
    assert wait is not None and wait.until == NOW + dt.timedelta(seconds=600)
    assert "issuers.letsencrypt.new_orders_per_window" in wait.reason
    assert "3 new orders in the last 10 min" in wait.reason
    # Other issuers have budgets of their own (the default: 300 per 3 h).
    assert reserve("gamma", "google") is None
    assert _count(store, AcmeNewOrder, AcmeNewOrder.issuer == "letsencrypt") == 3

    # The window slides: once the first reservation is 10 min old, one place frees.
    clock.now = NOW + dt.timedelta(seconds=600, microseconds=1)
    assert reserve("gamma") is None
    assert reserve("gamma") is not None


def test_budgets_hold_across_processes_through_the_ledger(store: Store, tmp_path: Path) -> None:
    # Two budgets (two nodes) share the one ledger: together they stay within the budget.
    ids = _tenants(store, *(f"t{i}" for i in range(6)))
    clock = Clock()
    nodes = [_budget(store, tmp_path, clock), _budget(store, tmp_path, clock)]
    granted = [
        node.reserve(order_id=i, tenant_id=ids[f"t{i}"], issuer="letsencrypt") is None
        for i, node in enumerate(nodes * 3)
    ]
    assert granted.count(True) == 3


def test_zero_turns_the_budgets_off(store: Store, tmp_path: Path) -> None:
    ids = _tenants(store, "alpha")
    clock = Clock()
    budget = _budget(
        store,
        tmp_path,
        clock,
        issuers={
            "letsencrypt": IssuerSettings(directory="https://ca.test/dir", new_orders_per_window=0)
        },
        tenant_acme_orders_per_window=0,
    )
    for _ in range(5):
        assert budget.reserve(order_id=1, tenant_id=ids["alpha"], issuer="letsencrypt") is None
    assert _count(store, AcmeNewOrder) == 0


def test_old_ledger_rows_are_deleted_as_new_ones_come(store: Store, tmp_path: Path) -> None:
    ids = _tenants(store, "alpha")
    clock = Clock()
    budget = _budget(store, tmp_path, clock, tenant_acme_orders_per_window=100)
    for _ in range(3):
        assert budget.reserve(order_id=1, tenant_id=ids["alpha"], issuer="letsencrypt") is None
    # Past every window (the longest: the default issuers' 3 h), only the newest remains.
    clock.advance(3 * 3600 + 1)
    assert budget.reserve(order_id=1, tenant_id=ids["alpha"], issuer="letsencrypt") is None
    assert _count(store, AcmeNewOrder) == 1


# --- a disabled tenant --------------------------------------------------------------------------


def _pending_order(store: Store, tenant_id: int, **values: Any) -> int:
    with transaction(store.sessions) as session:
        order = Order(**order_row(tenant_id, NOW, state=PENDING, acme_orders=1, **values))
        session.add(order)
        session.flush()
        session.add(
            ChallengeRecord(
                order_id=order.id,
                kind="dns-01",
                name="0123456789abcdef",
                value="txt",
                authz_url="https://ca.test/authz/1",
                created_at=NOW,
            )
        )
        return order.id


def test_disabling_a_tenant_stops_its_orders_and_removes_their_challenge_material(
    store: Store, tmp_path: Path
) -> None:
    ids = _tenants(store, "alpha", "beta")
    running = _pending_order(store, ids["alpha"], lease_owner=ME, lease_until=NOW)
    other = _pending_order(store, ids["beta"])
    with transaction(store.sessions) as session:
        assert tenants.set_disabled(session, "alpha", True) == 1
    with store.sessions() as session:
        stopped = session.get(Order, running)
        assert stopped is not None and stopped.state == FAILURE
        assert stopped.reason is not None and "disabled" in stopped.reason
        assert stopped.lease_owner is None  # the worker driving it loses its next save
        assert session.get(Order, other).state == PENDING  # type: ignore[union-attr]
    assert _count(store, ChallengeRecord, ChallengeRecord.order_id == running) == 0
    assert _count(store, ChallengeRecord, ChallengeRecord.order_id == other) == 1
    # Nothing new starts for it: a reservation (the last step before a newOrder) refuses.
    budget = _budget(store, tmp_path, Clock())
    with pytest.raises(TenantDisabled, match="disabled"):
        budget.reserve(order_id=running, tenant_id=ids["alpha"], issuer="letsencrypt")
    # Enabling it again stops nothing.
    with transaction(store.sessions) as session:
        assert tenants.set_disabled(session, "alpha", False) == 0


# --- fair claiming ------------------------------------------------------------------------------


def _overdue_order(tenant_id: int, domain: str, overdue_seconds: int) -> Order:
    return Order(
        **order_row(
            tenant_id,
            NOW - dt.timedelta(minutes=5),
            domains=domain,
            state=PENDING,
            next_attempt_at=WORKER_NOW - dt.timedelta(seconds=overdue_seconds),
            deadline_at=NOW + dt.timedelta(days=1),
        )
    )


def test_due_orders_are_claimed_round_robin_across_tenants(store: Store, tmp_path: Path) -> None:
    ids = _tenants(store, "flood", "quiet", "third")
    due: dict[str, list[int]] = {"flood": [], "quiet": [], "third": []}
    with transaction(store.sessions) as session:
        # The flooding tenant's orders are all more overdue than the others'.
        for tenant, count, first_due in (("flood", 6, 60), ("quiet", 1, 5), ("third", 2, 3)):
            for i in range(count):
                order = _overdue_order(ids[tenant], f"n{i}.{tenant}.test", first_due - i)
                session.add(order)
                session.flush()
                due[tenant].append(order.id)
    worker = _worker(store, tmp_path)
    worker._max_in_flight = 3  # each claim below is a batch worth taking turns for
    # Each tenant's most overdue order first, then each tenant's second, ...
    assert claimed_ids(worker, 3) == [due["flood"][0], due["quiet"][0], due["third"][0]]
    assert claimed_ids(worker, 3) == [due["flood"][1], due["third"][1], due["flood"][2]]
    # No backlog left (all the rest fit): the most overdue first.
    assert claimed_ids(worker, 10) == due["flood"][3:]


def test_under_a_backlog_turns_are_taken_for_batches_not_for_each_free_place(
    store: Store, tmp_path: Path
) -> None:
    ids = _tenants(store, "flood", "quiet")
    with transaction(store.sessions) as session:
        for tenant, count, first_due in (("flood", 20, 60), ("quiet", 1, 5)):
            for i in range(count):
                session.add(_overdue_order(ids[tenant], f"n{i}.{tenant}.test", first_due - i))
    worker = _worker(store, tmp_path)
    worker._max_in_flight = 16  # batches of 2 places
    first = claimed_ids(worker, 2)
    assert len(first) == 2
    # One free place right after: waits for a batch (or the poll interval), claims nothing.
    assert claimed_ids(worker, 1) == []
    assert len(claimed_ids(worker, 2)) == 2
