"""Purging old orders and dead codes, on SQLite and PostgreSQL (real databases, real API, CLI)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import make_engine, transaction
from certok.db.models import ChallengeRecord, Order, VerificationCode
from certok.db.sessions import make_session_factory
from certok.orders import purge as purging
from certok.orders.purge import PurgeCounts, next_batch_size, purge, run_purger
from certok.persistence import Store
from certok.settings import Settings
from tests.functional import test_api
from tests.functional.test_cli import run
from tests.kit import rows
from tests.kit.plans import sqlite_plans

# The API harness of test_api (real Starlette app on the same `store`).
api = test_api.api
ApiHarness = test_api.ApiHarness

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
RETENTION_HOURS = 72


def hours_ago(hours: float, now: dt.datetime = NOW) -> dt.datetime:
    return now - dt.timedelta(hours=hours)


def add_tenant(session: Session, name: str = "acme") -> int:
    return rows.add_tenant(session, name, created_at=NOW)


def order_row(tenant_id: int, state: str, finished_at: dt.datetime | None) -> dict[str, object]:
    created = (finished_at or NOW) - dt.timedelta(minutes=1)
    return rows.order_row(
        tenant_id,
        created,
        state=state,
        acme_orders=1,
        key_encrypted=secrets.token_bytes(64) if state == "issued" else None,
        certificate_pem="-----BEGIN CERTIFICATE-----" if state == "issued" else None,
        finished_at=finished_at,
    )


def add_order(
    session: Session,
    tenant_id: int,
    state: str,
    finished_at: dt.datetime | None,
    *,
    challenge: bool = False,
) -> tuple[int, str]:
    """An order with the code that started it (and a leftover challenge record if asked)."""
    order = Order(**order_row(tenant_id, state, finished_at))
    session.add(order)
    session.flush()
    code = add_code(session, tenant_id, expires_at=order.created_at, order_id=order.id)
    if challenge:
        session.add(
            ChallengeRecord(
                order_id=order.id,
                kind="dns-01",
                name=f"label{order.id}",
                value="txt-value",
                authz_url=f"https://ca.test/authz/{order.id}",
                created_at=order.created_at,
            )
        )
    return order.id, code


def add_code(
    session: Session, tenant_id: int, *, expires_at: dt.datetime, order_id: int | None = None
) -> str:
    code = secrets.token_hex(8)
    session.add(
        VerificationCode(
            code=code,
            tenant_id=tenant_id,
            challenge_type="dns",
            domains="www.example.com",
            created_at=expires_at - dt.timedelta(seconds=60),
            expires_at=expires_at,
            order_id=order_id,
        )
    )
    return code


def order_ids(sessions: sessionmaker[Session]) -> set[int]:
    with sessions() as session:
        return set(session.scalars(select(Order.id)))


def codes(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return set(session.scalars(select(VerificationCode.code)))


def row_counts(sessions: sessionmaker[Session]) -> tuple[int, int, int]:
    with sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Order)) or 0,
            session.scalar(select(func.count()).select_from(ChallengeRecord)) or 0,
            session.scalar(select(func.count()).select_from(VerificationCode)) or 0,
        )


def purge_at_now(
    sessions: sessionmaker[Session],
    *,
    dry_run: bool = False,
    batch_size: int = purging.BATCH_SIZE,
    code_grace: dt.timedelta = purging.EXPIRED_CODE_GRACE,
) -> PurgeCounts:
    return purge(
        sessions,
        RETENTION_HOURS,
        dry_run=dry_run,
        batch_size=batch_size,
        code_grace=code_grace,
        clock=lambda: NOW,
    )


def count_commits(store: Store) -> list[int]:
    commits: list[int] = []
    event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    return commits


def test_old_finished_orders_go_with_their_code_and_records(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        old_issued, old_issued_code = add_order(
            session, tenant, "issued", hours_ago(RETENTION_HOURS + 1), challenge=True
        )
        old_failed, old_failed_code = add_order(session, tenant, "failure", hours_ago(400))
        recent, recent_code = add_order(
            session, tenant, "issued", hours_ago(RETENTION_HOURS - 1), challenge=True
        )
        pending, pending_code = add_order(session, tenant, "pending", None, challenge=True)
        # A pending order is never purged, whatever else its row says.
        odd_pending, odd_code = add_order(session, tenant, "pending", hours_ago(1000))

    counts = purge_at_now(store.sessions)

    assert counts == PurgeCounts(orders=2, challenge_records=1, codes=2)
    assert order_ids(store.sessions) == {recent, pending, odd_pending}
    assert codes(store.sessions) == {recent_code, pending_code, odd_code}
    assert old_issued_code not in codes(store.sessions)
    assert old_failed_code not in codes(store.sessions)
    with store.sessions() as session:
        kept_records = set(session.scalars(select(ChallengeRecord.order_id)))
        # the old private key is gone with its row, not merely hidden
        assert session.get(Order, old_issued) is None
        assert session.get(Order, old_failed) is None
    assert kept_records == {recent, pending}
    # a second run finds nothing left to do
    assert purge_at_now(store.sessions) == PurgeCounts()


def test_unredeemed_codes_go_an_hour_after_they_expire(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        long_expired = add_code(session, tenant, expires_at=hours_ago(2))
        just_expired = add_code(session, tenant, expires_at=hours_ago(0.5))
        fresh = add_code(session, tenant, expires_at=NOW + dt.timedelta(seconds=30))
        # expired ten hours ago but redeemed: it stays while its order stays
        _, redeemed = add_order(session, tenant, "issued", hours_ago(10))

    assert purge_at_now(store.sessions) == PurgeCounts(codes=1)
    assert codes(store.sessions) == {just_expired, fresh, redeemed}
    assert long_expired not in codes(store.sessions)
    # the grace is a parameter: with none, the just-expired code goes too
    assert purge_at_now(store.sessions, code_grace=dt.timedelta(0)) == PurgeCounts(codes=1)
    assert codes(store.sessions) == {fresh, redeemed}


def test_apply_with_a_purged_code_says_unknown_and_to_call_dv(api: ApiHarness) -> None:
    # A real order through the API, finished (failed) longer ago than the retention.
    code = api.code_for("alpha", ["www.customer.test"])
    assert api.get("/v1/cert/apply", code=code).json()["data"]["status"] == "pending"
    real_now = dt.datetime.now(dt.UTC)
    with transaction(api.store.sessions) as session:
        order = session.scalars(select(Order)).one()
        order.state = "failure"
        order.reason = "caa: CAA record forbids issuance"
        order.finished_at = hours_ago(RETENTION_HOURS + 1, real_now)
    assert api.get("/v1/cert/apply", code=code).json()["data"]["status"] == "failure"
    # and a code nobody redeemed, expired two hours ago: today it answers "expired"
    stale = api.code_for("alpha", ["www.customer.test"], ttl=-7200)
    test_api.assert_error(api.get("/v1/cert/apply", code=stale), 410, "expired")

    counts = purge(api.store.sessions, RETENTION_HOURS)

    assert counts == PurgeCounts(orders=1, codes=2)
    for gone in (code, stale):
        response = api.get("/v1/cert/apply", code=gone)
        test_api.assert_error(response, 404, gone, "/v1/cert/dv")
        assert response.json()["code"] == 1404
        assert "not found" in response.json()["msg"]


def test_batches_cover_more_rows_than_one_batch(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        for _ in range(7):
            add_order(session, tenant, "issued", hours_ago(100), challenge=True)
        for _ in range(5):
            add_code(session, tenant, expires_at=hours_ago(5))
        kept, _ = add_order(session, tenant, "failure", hours_ago(1))
    commits = count_commits(store)

    counts = purge_at_now(store.sessions, batch_size=2)

    assert counts == PurgeCounts(orders=7, challenge_records=7, codes=12)
    assert order_ids(store.sessions) == {kept}
    assert row_counts(store.sessions) == (1, 0, 1)
    # at most 2 rows per transaction: 3 batches of codes, 4 of orders (more if any was slow)
    assert len(commits) >= 7


def test_default_batches_on_a_store_larger_than_one_batch(store: Store) -> None:
    many = 2 * purging.BATCH_SIZE + 7
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        session.execute(
            insert(Order), [order_row(tenant, "issued", hours_ago(100)) for _ in range(many)]
        )
        recent, _ = add_order(session, tenant, "issued", hours_ago(1))
    commits = count_commits(store)

    counts = purge_at_now(store.sessions)

    assert counts == PurgeCounts(orders=many)
    assert order_ids(store.sessions) == {recent}
    assert len(commits) >= 3


def test_dry_run_counts_and_deletes_nothing(store: Store) -> None:
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        for _ in range(3):
            add_order(session, tenant, "issued", hours_ago(100), challenge=True)
        add_order(session, tenant, "pending", None, challenge=True)
        add_code(session, tenant, expires_at=hours_ago(2))
    before = row_counts(store.sessions)

    predicted = purge_at_now(store.sessions, dry_run=True)

    assert row_counts(store.sessions) == before
    assert predicted == PurgeCounts(orders=3, challenge_records=3, codes=4)
    assert purge_at_now(store.sessions) == predicted


def test_two_nodes_purging_at_once_delete_each_row_once(store: Store, database_url: str) -> None:
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        for _ in range(60):
            add_order(session, tenant, "issued", hours_ago(100), challenge=True)
        for _ in range(40):
            add_code(session, tenant, expires_at=hours_ago(5))
    # Two engines, as two nodes (or a CLI run beside `certok serve`) would have.
    engines = [make_engine(database_url) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(
                lambda engine: purge_at_now(make_session_factory(engine), batch_size=7), engines
            )
        )
    for engine in engines:
        engine.dispose()

    assert runs[0] + runs[1] == PurgeCounts(orders=60, challenge_records=60, codes=100)
    assert row_counts(store.sessions) == (0, 0, 0)


@pytest.mark.parametrize(
    ("size", "held", "expected"),
    [(500, 0.5, 250), (1, 5.0, 1), (100, 0.001, 200), (400, 0.001, 500), (64, 0.05, 64)],
)
def test_next_batch_size_shrinks_when_slow_and_grows_when_quick(
    size: int, held: float, expected: int
) -> None:
    assert next_batch_size(size, held, 500) == expected


def run_cli(database_url: str, data_dir: Path, *args: str) -> str:
    return run(data_dir, *args, CERTOK_DATABASE_URL=database_url).stdout


def test_cli_purge_and_dry_run(store: Store, database_url: str, tmp_path: Path) -> None:
    real_now = dt.datetime.now(dt.UTC)
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        add_order(session, tenant, "issued", hours_ago(RETENTION_HOURS + 2, real_now))
        kept, _ = add_order(session, tenant, "issued", hours_ago(RETENTION_HOURS - 2, real_now))
        add_code(session, tenant, expires_at=hours_ago(3, real_now))
    before = row_counts(store.sessions)
    data = tmp_path / "data"

    dry = run_cli(database_url, data, "purge", "--dry-run")
    assert dry.strip() == (
        "would purge 1 finished order(s) with 0 challenge record(s), "
        "2 verification code(s) (dry run: nothing deleted)"
    )
    assert row_counts(store.sessions) == before

    done = run_cli(database_url, data, "purge")
    assert done.strip() == (
        "purged 1 finished order(s) with 0 challenge record(s), 2 verification code(s)"
    )
    assert order_ids(store.sessions) == {kept}

    assert run_cli(database_url, data, "purge").strip().startswith("purged 0 finished order(s)")


def test_purger_loop_logs_only_when_it_deleted(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="certok.orders.purge")
    real_now = dt.datetime.now(dt.UTC)
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        old, _ = add_order(session, tenant, "failure", hours_ago(30, real_now))
        kept, _ = add_order(session, tenant, "failure", hours_ago(20, real_now))
    settings = Settings(order_retention_hours=24)

    async def run_a_few_rounds() -> None:
        task = asyncio.create_task(run_purger(store.sessions, settings, 0.05))
        await asyncio.sleep(0.5)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_a_few_rounds())

    assert order_ids(store.sessions) == {kept}
    assert old not in order_ids(store.sessions)
    logged = [r for r in caplog.records if r.name == "certok.orders.purge"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [
        ("INFO", "purged 1 finished order(s) with 0 challenge record(s), 1 verification code(s)")
    ]


def test_purger_loop_survives_a_failing_run_and_zero_disables_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A database without the schema: every run fails.
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    sessions = make_session_factory(engine)
    settings = Settings(order_retention_hours=24)

    async def rounds() -> None:
        assert await asyncio.wait_for(run_purger(sessions, settings, 0), 1) is None
        task = asyncio.create_task(run_purger(sessions, settings, 0.05))
        await asyncio.sleep(0.3)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(rounds())
    engine.dispose()
    failures = [r for r in caplog.records if r.getMessage().startswith("purge failed")]
    assert len(failures) >= 2
    assert all(r.levelname == "WARNING" for r in failures)


def test_the_purge_finds_old_orders_by_their_finish_not_by_walking_every_issued_order(
    store: Store,
) -> None:
    # With only ix_orders_due (state, next_attempt_at), SQLite took the state alone: each
    # purge read the row of every issued order, on a large store the whole table.
    if store.engine.dialect.name != "sqlite":
        pytest.skip("the query plan is read from SQLite's EXPLAIN QUERY PLAN")
    with transaction(store.sessions) as session:
        tenant = add_tenant(session)
        add_order(session, tenant, "issued", hours_ago(RETENTION_HOURS + 1))
        add_order(session, tenant, "issued", hours_ago(1))

    def finding(sql: str) -> bool:
        return sql.lstrip().upper().startswith("SELECT") and "finished_at <" in sql

    plans = sqlite_plans(store.engine, finding, lambda: purge_at_now(store.sessions))
    assert plans, "the purge looked for no old orders"
    assert "INDEX ix_orders_finished (state=? AND finished_at<?)" in plans[0], plans[0]
    for plan in plans:
        assert "ix_orders_due (state=?)" not in plan, plan
