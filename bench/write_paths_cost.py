"""CPU of hot database paths on PostgreSQL, the ways they were and the way they are, in one process.

- the issuing save: the order's lease-fenced UPDATE, the certificate's record (INSERT ...
  SELECT, chain and key, names) and the removal of the order's challenge material, as five
  statements (`record_issued` and the solver's cleanup, as SQLite still runs it) or as one
  (certok/orders/issuing_save.py); each in its write transaction;
- apply's redemption of a new code: the tenant's flag, the code, the code again in
  `redeem_code`, the order's INSERT and the code's bind (before), or the flag and the code in
  one read handed to `redeem_code` (the transaction SQLite still runs,
  certok/orders/quotas.py), or the whole redemption as one statement in autocommit
  (PostgreSQL's now; certok/orders/redeem_statement.py);
- a step's order load: `Connection.execute` in a session (before), or the statement on the
  driver's cursor on a plain connection (now; certok/db/cursor_statements.py);
- a poll's lease-fenced save with the answers' mark (one statement, in autocommit):
  `Connection.execute` (before) or on the cursor (now);
- the DNS process's zone refresh, its reads only: the labels' fingerprint and the TXT rows
  as two statements in a session (before), or as one on the cursor (now).

Each variant runs in blocks of `--block` operations, alternating, for `--rounds` rounds, on a
fresh database. Reported per operation, the median of the rounds: this thread's CPU
(time.thread_time) and the CPU of the database's backends (/proc/PID/stat of the server's
processes, which must be local; clock ticks, so a block needs a few hundred operations).

    python bench/write_paths_cost.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy
from sqlalchemy import delete, insert, text

from certok.assembly import standard_solvers
from certok.certificates.records import issued_certificate, record_issued
from certok.challenge_solver import remove_material
from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import AcmeAccount, ChallengeRecord, Order
from certok.db.sessions import make_session_factory
from certok.db.writes import write, write_statement
from certok.dnszone.zone_cache import _LABELS_FINGERPRINT, _REFRESH, _TXT_ROWS, ZoneCache
from certok.orders import quotas
from certok.orders.codes import issue_code
from certok.orders.redeem_statement import redeem_in_one_statement
from certok.orders.redemption import RedemptionTerms
from certok.orders.rows import _LOAD, _SAVE, LeaseLost, _combined_save, load_snapshot, save_job
from certok.orders.service import _CODE, redeem_code
from certok.settings import Settings
from certok.tenants import service as tenants
from tests.kit.certs import self_signed
from tests.kit.rows import order_row

ME = "cost-worker"
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(admin: sqlalchemy.Engine, database: str) -> float:
    """CPU seconds of the server's processes for `database` so far."""
    with admin.connect() as connection:
        pids = connection.scalars(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": database}
        ).all()
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def old_issue(connection: Any, *, order_id: int, values: dict[str, Any], record: Any) -> None:
    """The issuing save as five statements (what SQLite runs)."""
    params = {**values, "b_order_id": order_id, "b_worker_id": ME}
    if connection.execute(_SAVE, params).rowcount != 1:
        raise LeaseLost(order_id)
    record_issued(connection, order_id, record)
    remove_material(connection, order_id, None)  # what every solver's cleanup(..., None) does


def old_redeem(connection: Any, *, tenant_id: int, code: str) -> int:
    """Redemption as it was: the flag, the code, the code again, INSERT, bind."""
    connection.scalar(quotas.TENANT_DISABLED, {"b_tenant_id": tenant_id})
    connection.execute(_CODE, {"b_code": code}).first()
    order_id, _ = redeem_code(
        connection,
        tenant_id,
        code,
        algorithm="ECC",
        issuer="letsencrypt",
        deadline_seconds=3600,
        clock=lambda: NOW,
    )
    return order_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--block", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    url = sqlalchemy.engine.make_url(args.postgres)
    database = f"certok_write_paths_{os.getpid()}"
    admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    engine = make_engine(url.set(database=database).render_as_string(hide_password=False))
    try:
        run(engine, admin, database, args.block, args.rounds)
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def run(
    engine: sqlalchemy.Engine, admin: sqlalchemy.Engine, database: str, block: int, rounds: int
) -> None:
    upgrade(engine)
    sessions = make_session_factory(engine)
    settings = Settings(data_dir=Path("/nonexistent"), resolvers=["127.0.0.1:9"])
    solver = standard_solvers(settings)["dns"]
    count = (block * rounds + 10) * 2
    with transaction(sessions) as session:
        tenant_id = tenants.create_tenant(session, "cost").id
        session.add(
            AcmeAccount(
                issuer="letsencrypt",
                directory_url="https://ca.test/dir",
                key_encrypted=b"k",
                account_url="https://ca.test/acct/1",
                created_at=NOW,
            )
        )
        rows = [
            order_row(
                tenant_id, NOW, lease_owner=ME, key_encrypted=b"key" * 40, csr_pem="csr" * 100
            )
            for _ in range(count + 10)  # 10 more for the loads and saves
        ]
        order_ids = list(session.scalars(insert(Order).returning(Order.id), rows))
        session.execute(
            insert(ChallengeRecord),
            [
                {
                    "order_id": order_id,
                    "kind": "dns-01",
                    "name": f"l{order_id}-{n}",
                    "value": "v" * 43,
                    "authz_url": f"https://ca.test/authz/{order_id}/{n}",
                    "created_at": NOW,
                }
                for order_id in order_ids
                for n in range(2)
            ],
        )
        codes = [
            issue_code(session, tenant_id, "dns", [f"n{i}.customer.test"], 3600)
            for i in range(count * 3 // 2)
        ]
    chain, _ = self_signed(["www.customer.test", "customer.test"], not_before=NOW)
    record = issued_certificate(chain, NOW, ari=False)
    values = {
        "state": "issued",
        "reason": None,
        "certificate_pem": chain,
        "finished_at": NOW,
        "lease_owner": None,
        "lease_until": None,
    }

    def issue_new(order_id: int) -> None:
        write(
            sessions,
            functools.partial(
                save_job,
                order_id=order_id,
                worker_id=ME,
                values=values,
                answered=[],
                answered_at=NOW,
                drop_records=solver,
                certificate=record,
            ),
        )

    def issue_old(order_id: int) -> None:
        write(
            sessions, functools.partial(old_issue, order_id=order_id, values=values, record=record)
        )

    def terms(code: str) -> RedemptionTerms:
        return RedemptionTerms(
            tenant_id=tenant_id,
            code=code,
            algorithm="ECC",
            issuer="letsencrypt",
            deadline_seconds=3600,
            order_extras={},
            max_pending=0,
            join_seconds=0,
            now=NOW,
        )

    def redeem_new(code: str) -> None:
        write(sessions, functools.partial(quotas.redeem_job, terms=terms(code)))

    def redeem_one(code: str) -> None:
        write_statement(sessions, functools.partial(redeem_in_one_statement, terms=terms(code)))

    def redeem_old(code: str) -> None:
        write(sessions, functools.partial(old_redeem, tenant_id=tenant_id, code=code))

    # Loads and saves go round a set of orders that stay pending under the lease.
    held = order_ids[-10:]
    load_params = {"b_worker_id": ME}

    def load_old(n: int) -> None:
        with sessions() as session:
            statement = _LOAD.statement
            session.connection().execute(statement, {**load_params, "b_order_id": held[n % 10]})

    def load_new(n: int) -> None:
        with sessions.read_connection() as connection:
            load_snapshot(connection, held[n % 10], ME, None)

    poll = _combined_save(("attempts", "next_attempt_at"), "answered")
    poll_params = {
        "v_attempts": 0,
        "v_next_attempt_at": NOW,
        "b_answered_at": NOW,
        "b_authz_urls": ["https://ca.test/authz/x/0"],
        "b_worker_id": ME,
    }

    def poll_old(n: int) -> None:
        with autocommit.connect() as connection:
            params = {**poll_params, "b_order_id": held[n % 10]}
            assert connection.scalar(poll.statement, params) == 1  # type: ignore[call-overload]

    def poll_new(n: int) -> None:
        with autocommit.connect() as connection:
            params = {**poll_params, "b_order_id": held[n % 10]}
            assert poll.run(connection, params).scalar() == 1

    fingerprint_old = sqlalchemy.select(*_LABELS_FINGERPRINT.c)
    txt_old = sqlalchemy.select(_TXT_ROWS.c.name, _TXT_ROWS.c.value).order_by(_TXT_ROWS.c.id.desc())
    cache = ZoneCache(sessions)

    def refresh_old(_: int) -> None:
        with sessions() as session:
            session.execute(fingerprint_old).one()
            session.execute(txt_old).all()

    def refresh_new(_: int) -> None:
        cache._load()
        assert _REFRESH  # the statement `_load` runs

    autocommit = sessions.autocommit_engine
    assert autocommit is not None
    steps = list(range(count // 2))

    cases: list[Case] = [
        ("issuing save", "five statements", issue_old, order_ids[:count][0::2]),
        ("issuing save", "one statement", issue_new, order_ids[:count][1::2]),
        ("redemption", "flag, code, code again", redeem_old, codes[0::3]),
        ("redemption", "flag and code in one read", redeem_new, codes[1::3]),
        ("redemption", "one statement, autocommit", redeem_one, codes[2::3]),
        ("order load", "execute in a session", load_old, steps),
        ("order load", "cursor on a connection", load_new, steps),
        ("poll save with the answers' mark", "execute", poll_old, steps),
        ("poll save with the answers' mark", "cursor", poll_new, steps),
    ]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    measure(cases, results, admin, database, block, rounds)
    # The zone refresh with as many TXT values as 200 orders in flight present: the rows
    # above (two per order, for every order) are far more than ever pend at once.
    with transaction(sessions) as session:
        session.execute(delete(ChallengeRecord))
        session.execute(
            insert(ChallengeRecord),
            [
                {
                    "order_id": held[n % 10],
                    "kind": "dns-01",
                    "name": f"l{n}",
                    "value": "v" * 43,
                    "authz_url": f"https://ca.test/authz/{n}",
                    "created_at": NOW,
                }
                for n in range(200)
            ],
        )
    refreshes = [
        ("zone refresh, 200 TXT rows (reads)", "two statements in a session", refresh_old, steps),
        ("zone refresh, 200 TXT rows (reads)", "one statement on the cursor", refresh_new, steps),
    ]
    measure(refreshes, results, admin, database, block, rounds)
    print("| path | variant | certok CPU per operation | backend CPU per operation |")
    print("|---|---|---|---|")
    for (name, variant), samples in results.items():
        client = statistics.median(s[0] for s in samples) * 1e6
        server = statistics.median(s[1] for s in samples) * 1e6
        print(f"| {name} | {variant} | {client:.0f} µs | {server:.0f} µs |")


Case = tuple[str, str, Callable[[Any], None], list[Any]]


def measure(
    cases: list[Case],
    results: dict[tuple[str, str], list[tuple[float, float]]],
    admin: sqlalchemy.Engine,
    database: str,
    block: int,
    rounds: int,
) -> None:
    """Each case in blocks of `block`, alternating, for `rounds` rounds, into `results`."""
    # Warm up: connections, prepared statements (psycopg prepares on the fifth run).
    for _, _, function, items in cases:
        for item in items[:10]:
            function(item)
    for round_number in range(rounds):
        for name, variant, function, items in cases:
            batch = items[10 + round_number * block : 10 + (round_number + 1) * block]
            if not batch:
                continue
            backends = backend_cpu(admin, database)
            started = time.thread_time()
            for item in batch:
                function(item)
            client = (time.thread_time() - started) / len(batch)
            server = (backend_cpu(admin, database) - backends) / len(batch)
            results.setdefault((name, variant), []).append((client, server))


if __name__ == "__main__":
    main()
