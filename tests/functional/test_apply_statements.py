"""SQL statements of `/v1/cert/apply` and `/v1/cert/dv` for one new order, on SQLite and
PostgreSQL: the API's side of an order (the worker's: test_issuance_statements.py).

Every statement is counted with a `before_cursor_execute` listener. On PostgreSQL each costs
a round trip, SQLAlchemy's work around it and the backend's: a new order's apply reads its
code once in the route and once in the redemption's transaction, its terms (the certificate
it renews, that certificate's profile, the tenant's default profile) in one statement, and
its order's view once, when the order has finished; dv and the ownership check read a
delegation once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import event, update
from starlette.testclient import TestClient

from certok.api.caches import TtlCache
from certok.api.routes import create_app
from certok.api.waiters import OrderWaiters, Watch
from certok.assembly import build_api_services, build_checks
from certok.db.engine import transaction
from certok.db.models import Order
from certok.domains.delegations import ensure_delegations
from certok.order_states import FAILURE
from certok.orders.codes import issue_code
from certok.orders.finished_row import FinishedRow
from certok.persistence import Store
from certok.prechecks.resolver import make_blocking_resolver
from certok.tenants import service as tenants
from certok.verification.dns_verifier import DnsVerifier
from tests.functional.test_api import api_settings
from tests.kit.dns import CERTOK_ZONE

pytestmark = pytest.mark.timeout(60)

NAMES = ["www.customer.test", "customer.test"]
# What only the order's view reads (certok/orders/service.py's VIEW_COLUMNS).
VIEW_READ = "orders.certificate_pem"


@dataclass
class Statements:
    """The statements sent while `counting`, except the token checks (cached in service)."""

    texts: list[str] = field(default_factory=list)
    on: bool = False

    def note(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self.on and "api_tokens" not in statement:
            self.texts.append(statement)

    @contextlib.contextmanager
    def counting(self) -> Iterator[list[str]]:
        self.texts.clear()
        self.on = True
        try:
            yield self.texts
        finally:
            self.on = False

    def reading(self, *words: str) -> list[str]:
        return [
            text
            for text in self.texts
            if text.lstrip().upper().startswith(("SELECT", "WITH"))
            and all(w in text for w in words)
        ]


class _NotingWatch(Watch):
    """A request's watch that says when the request starts waiting on it."""

    def __init__(self, inner: Watch, waiting: threading.Event) -> None:
        self._inner = inner
        self._waiting = waiting
        super().__init__(inner.event)

    @property
    def row(self) -> FinishedRow | None:
        return self._inner.row

    @row.setter
    def row(self, value: FinishedRow | None) -> None:
        self._inner.row = value

    async def wait(self, timeout: float) -> bool:
        self._waiting.set()
        return await self._inner.wait(timeout)


class _NotingWaiters(OrderWaiters):
    """The process's waiters, bound to the app's loop, noting when a request waits."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    @contextlib.contextmanager
    def watch(self, order_id: int) -> Iterator[Watch]:
        self.bind(asyncio.get_running_loop())
        with super().watch(order_id) as inner:
            yield _NotingWatch(inner, self.waiting)


@dataclass
class Harness:
    client: TestClient
    store: Store
    token: str
    tenant_id: int
    waiters: _NotingWaiters
    statements: Statements
    finish_when_waiting: bool = False
    # Whether the finisher hands on what it saved, as this process's worker does.
    hand_row: bool = False
    workers: list[threading.Thread] = field(default_factory=list)

    def code(self) -> str:
        with transaction(self.store.sessions) as session:
            return issue_code(session, self.tenant_id, "dns", NAMES, 60)

    def apply(self, code: str) -> Any:
        return self.client.get(
            "/v1/cert/apply", params={"code": code}, headers={"httpsok-token": self.token}
        )

    def wake_worker(self) -> None:
        """The worker, woken for a new order: it fails the order once the request waits."""
        if self.finish_when_waiting:
            worker = threading.Thread(target=self._finish_when_waiting)
            self.workers.append(worker)
            worker.start()

    def _finish_when_waiting(self) -> None:
        assert self.waiters.waiting.wait(30)
        with transaction(self.store.sessions) as session:
            order = session.execute(
                update(Order)
                .where(Order.tenant_id == self.tenant_id)
                .values(state=FAILURE, reason="the CA said no")
                .returning(Order.id, Order.issuer, Order.domains)
            ).one()
        row = FinishedRow(order.id, FAILURE, order.issuer, order.domains, "the CA said no")
        self.waiters.finished(order.id, row if self.hand_row else None)


def _harness(store: Store, tmp_path: Any, wait_seconds: float) -> Iterator[Harness]:
    with transaction(store.sessions) as session:
        tenant_id = tenants.create_tenant(session, "alpha").id
        token = tenants.issue_token(session, "alpha")
    settings = api_settings(tmp_path, apply_wait_seconds=wait_seconds)
    statements = Statements()
    waiters = _NotingWaiters()
    harness_box: list[Harness] = []
    services = build_api_services(
        settings,
        store,
        build_checks(settings, store, label_key=b"k" * 32),
        waiters=waiters,
        wake_worker=lambda: harness_box[0].wake_worker(),
        tokens=TtlCache(ttl=0, max_entries=10),
    )
    event.listen(store.engine, "before_cursor_execute", statements.note)
    try:
        with TestClient(create_app(services), raise_server_exceptions=False) as client:
            harness = Harness(client, store, token, tenant_id, waiters, statements)
            harness_box.append(harness)
            yield harness
            for worker in harness.workers:
                worker.join(30)
    finally:
        event.remove(store.engine, "before_cursor_execute", statements.note)


@pytest.fixture
def at_once(store: Store, tmp_path: Any) -> Iterator[Harness]:
    """apply answers at once (apply_wait_seconds = 0)."""
    yield from _harness(store, tmp_path, 0.0)


@pytest.fixture
def held(store: Store, tmp_path: Any) -> Iterator[Harness]:
    """apply holds the request until its order finishes."""
    yield from _harness(store, tmp_path, 30.0)


def test_a_new_orders_apply_reads_its_terms_in_one_statement(at_once: Harness) -> None:
    code = at_once.code()
    with at_once.statements.counting():
        response = at_once.apply(code)
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"status": "pending"}
    statements = at_once.statements
    # The route's read of the code, and the redemption's: the code's names are not read a
    # third time for the order's terms.
    assert len(statements.reading("verification_codes")) == 2, statements.texts
    # The renewal target and the tenant's default profile: one statement.
    terms = statements.reading("certificate_names")
    assert len(terms) == 1 and "default_profile" in terms[0], statements.texts
    assert len(statements.reading("default_profile")) == 1, statements.texts
    # Everything: the code's read, the terms, the redemption (on PostgreSQL the tenant's lock,
    # as the pending cap is on, and one statement; elsewhere the tenant's flag and the code, the
    # join's look-up, the pending count, the order's INSERT, the code's binding) and the
    # order's view at the end.
    redemption = 2 if at_once.store.engine.dialect.name == "postgresql" else 5
    assert len(statements.texts) == 3 + redemption, statements.texts


def test_a_request_that_made_its_order_reads_it_once_when_it_finishes(held: Harness) -> None:
    held.finish_when_waiting = True
    code = held.code()
    with held.statements.counting():
        response = held.apply(code)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == FAILURE, response.text
    # Pending by construction until the request waits: no read of its view before.
    assert len(held.statements.reading(VIEW_READ)) == 1, held.statements.texts


def test_a_request_its_worker_hands_the_finished_order_reads_nothing(held: Harness) -> None:
    held.finish_when_waiting = held.hand_row = True
    code = held.code()
    with held.statements.counting():
        response = held.apply(code)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == FAILURE, response.text
    assert "the CA said no" in response.text
    # Only the code's read and the redemption's statements: the view comes from the finisher.
    assert held.statements.reading(VIEW_READ) == [], held.statements.texts


def test_dv_and_the_ownership_check_read_a_delegation_once(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant_id = tenants.create_tenant(session, "alpha").id
        # One name delegated before (read once), one that the first dv stores.
        ensure_delegations(session, tenant_id, NAMES[:1], b"k" * 32)
    statements = Statements()
    verifier = DnsVerifier(
        store.sessions,
        zone=CERTOK_ZONE,
        label_key=b"k" * 32,
        # Nothing listens there: the look-ups fail fast; the delegation is read first.
        resolver=make_blocking_resolver(["127.0.0.1:9"], 0.2),
        lookups=ThreadPoolExecutor(1),
        code_ttl_seconds=60,
    )
    event.listen(store.engine, "before_cursor_execute", statements.note)
    try:
        with statements.counting():
            first = verifier.labels(tenant_id, NAMES)
            problems = [verifier.ownership_problem(tenant_id, NAMES) for _ in range(3)]
            again = verifier.labels(tenant_id, NAMES)
    finally:
        event.remove(store.engine, "before_cursor_execute", statements.note)
    assert first == again and set(first) == set(NAMES)
    assert all(problem and "not delegated" not in problem for problem in problems), problems
    # The first dv's read of both, and the store's own read before it adds the new one;
    # nothing after.
    assert len(statements.reading("delegations")) == 2, statements.texts
    # A name it has not read is read (and not taken as missing).
    assert verifier.ownership_problem(tenant_id, ["other.test"]) is not None
