"""A read session on PostgreSQL: certok's session factory against a plain SQLAlchemy one.

    python bench/pg_read_session.py --postgres URL [--reads 2000] [--rounds 5] [--json FILE]

Most of certok's database work outside the worker's saves is a session that reads one row
(apply's code and order, the waiters' poll, dv's delegation lookup, each step's order load).
This script times, in this process and alternating rounds on one engine and one connection
pool, `--reads` such sessions (one primary-key SELECT each, the shape of apply's code lookup):
- *plain*: `sessionmaker(engine)`, as before: psycopg sends BEGIN before the SELECT and the
  session's close sends ROLLBACK (three round trips);
- *certok*: `certok.db.engine.make_session_factory(engine)` (reads in autocommit: one);
and reports wall time and this process's CPU time per read, and the server's transactions per
read from `pg_stat_database` (a ROLLBACK is a transaction there; an autocommit SELECT too).
A `transaction()` write after each round checks that writes still commit atomically.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy
from _common import Measurement, Report, bench_parser, describe_machine, finish, invocation
from issuance_throughput import fresh_postgres_database
from sqlalchemy.orm import sessionmaker

BENCH = "pg_read_session"
_READ = sqlalchemy.text("SELECT id, value FROM bench_rows WHERE id = :id")


def server_transactions(engine: sqlalchemy.Engine) -> int:
    with engine.connect() as db:
        db.execute(sqlalchemy.text("SELECT pg_stat_force_next_flush()"))
        value = db.scalar(
            sqlalchemy.text(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            )
        )
        db.rollback()
    return int(value or 0)


def read_round(factory: sessionmaker, reads: int) -> tuple[float, float]:  # type: ignore[type-arg]
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(reads):
        with factory() as session:
            session.execute(_READ, {"id": i % 1000 + 1}).one()
    return (time.perf_counter() - wall) / reads, (time.process_time() - cpu) / reads


def run(args: argparse.Namespace) -> Report:
    from certok.db.engine import make_engine, transaction
    from certok.db.sessions import make_session_factory

    print(f"{BENCH}: {describe_machine()}", flush=True)
    url = fresh_postgres_database(args.postgres, "read_session")
    engine = make_engine(url)
    with engine.begin() as db:
        db.execute(sqlalchemy.text("CREATE TABLE bench_rows (id int PRIMARY KEY, value text)"))
        rows = "SELECT g, md5(g::text) FROM generate_series(1, 1000) g"
        db.execute(sqlalchemy.text(f"INSERT INTO bench_rows {rows}"))
    certok_factory = make_session_factory(engine)
    factories = {
        "plain sessionmaker (BEGIN, SELECT, ROLLBACK)": sessionmaker(engine),
        "certok's session factory (autocommit read)": certok_factory,
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in factories}
    try:
        for factory in factories.values():
            read_round(factory, 200)  # warm-up: connections, prepared statements
        for _ in range(args.rounds):
            for name, factory in factories.items():
                before = server_transactions(engine)
                wall, cpu = read_round(factory, args.reads)
                # Two transactions of server_transactions' own connection are counted too.
                xacts = (server_transactions(engine) - before - 2) / args.reads
                results[name].append((wall, cpu, xacts))
                with transaction(certok_factory) as session:
                    session.execute(
                        sqlalchemy.text("UPDATE bench_rows SET value = 'x' WHERE id = 1")
                    )
    finally:
        engine.dispose()
    report = Report(commands=[invocation(__file__)])
    reference = statistics.median(w for w, _, _ in results[next(iter(factories))])
    for name, rows in results.items():
        wall = statistics.median(w for w, _, _ in rows)
        cpu = statistics.median(c for _, c, _ in rows)
        xacts = statistics.median(x for _, _, x in rows)
        report.measurements.append(
            Measurement(
                BENCH,
                name,
                rate=1 / wall,
                rate_unit="reads/s (one thread)",
                ratio=wall / reference,
                ratio_of="plain sessionmaker's wall time",
                latency={"median": wall},
                note=(
                    f"CPU {cpu * 1e6:.0f} µs per read (this process); "
                    f"{xacts:.2f} server transactions per read; median of {args.rounds} rounds "
                    f"of {args.reads}"
                ),
            )
        )
    return report


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--postgres", metavar="URL", required=True, help="a PostgreSQL server")
    parser.add_argument("--reads", type=int, default=2000, help="read sessions per round (2000)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    args = parser.parse_args()
    finish(run(args), args.json, show_commands=True)


if __name__ == "__main__":
    main()
