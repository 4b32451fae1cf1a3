"""In-process CPU of statements on the driver's cursor, another checkout's classes against this
one's, alternating rounds in one process on the same connection:

- apply's read of polled codes (certok/orders/code_reads.py's statement, 1 and 6 codes a
  read, stored codes without orders), on SQLite and PostgreSQL: the other checkout's
  `DriverSelect` (certok/db/driver_statements.py, before the mend round) against this one's
  `CursorStatement(..., driver_values=True)`;
- the worker's order load (certok/orders/rows.py `_LOAD`, typed values), on PostgreSQL: the
  other checkout's `CursorStatement` against this one's.

    python bench/cursor_statement_cost.py --base /path/to/base/checkout [--postgres URL]

Reported per statement: this thread's CPU (time.thread_time), the median of the rounds, and
new / base.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Connection, text
from sqlalchemy.util import immutabledict

from certok.db import cursor_statements
from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import VerificationCode
from certok.db.models.tenants import CODE_READ_INDEX
from certok.db.sessions import make_session_factory
from certok.orders import code_reads, rows
from certok.tenants import service as tenants

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
CODES = [f"{n:016x}" for n in range(500)]


def base_module(base: Path, relative: str, name: str) -> ModuleType:
    """A module of the base checkout, loaded by path under `name`."""
    spec = importlib.util.spec_from_file_location(name, base / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def per_call(fn: Callable[[int], Any], n: int) -> float:
    started = time.thread_time()
    for i in range(n):
        fn(i)
    return (time.thread_time() - started) / n * 1e6


def compare(label: str, base: Callable[[int], Any], new: Callable[[int], Any]) -> None:
    base_runs, new_runs = [], []
    for _ in range(7):
        base_runs.append(per_call(base, 2000))
        new_runs.append(per_call(new, 2000))
    b, n = statistics.median(base_runs), statistics.median(new_runs)
    print(f"| {label} | {b:.1f} µs | {n:.1f} µs | {n / b:.2f} |")


def stored(url: str) -> Any:
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(engine)
    with transaction(make_session_factory(engine)) as session:
        tenant_id = tenants.create_tenant(session, "bench").id
        session.execute(
            VerificationCode.__table__.insert(),
            [
                {"code": code, "tenant_id": tenant_id, "challenge_type": "dns",
                 "domains": "a.example.com", "created_at": NOW, "expires_at": NOW}
                for code in CODES
            ],
        )  # fmt: skip
    return engine


def run(url: str, driver_select: Any, base_cursor: Any) -> None:
    engine = stored(url)
    name = engine.dialect.name
    # As the base's code_reads built it (its sqlite_index option; the statement without
    # this checkout's hint, which SQLite would otherwise see twice).
    unhinted = code_reads._CODES_AND_ORDERS._generate()
    unhinted._hints = immutabledict()
    base_read = driver_select.DriverSelect(
        unhinted,
        "b_codes",
        sqlite_index=(code_reads._CODES, CODE_READ_INDEX),
    )
    new_read = code_reads._READ_CODES
    with engine.connect() as connection:
        for batch in (1, 6):

            def wanted(i: int, batch: int = batch) -> list[str]:
                return [CODES[(i * batch + k) % len(CODES)] for k in range(batch)]

            def old(i: int, c: Connection = connection, w: Any = wanted) -> Any:
                return base_read.run(c, w(i))

            def new(i: int, c: Connection = connection, w: Any = wanted) -> Any:
                return new_read.rows(c, {"b_codes": w(i)})

            assert len(old(0)) == len(new(0)) == batch
            compare(f"apply's code read, {batch} code(s), {name}", old, new)
        if name == "postgresql":
            base_load = base_cursor.CursorStatement(rows._LOAD.statement)
            values = {"b_order_id": 1, "b_worker_id": "w"}
            compare(
                "the worker's order load (no row), postgresql",
                lambda _i: base_load.run(connection, values),
                lambda _i: rows._LOAD.run(connection, values),
            )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--postgres", metavar="URL")
    args = parser.parse_args()
    # The base's CursorStatement imports run_on_cursor from its driver_statements.
    driver_select = base_module(
        args.base, "certok/db/driver_statements.py", "certok.db.driver_statements"
    )
    base_cursor = base_module(args.base, "certok/db/cursor_statements.py", "base_cursor")
    assert base_cursor is not cursor_statements
    print("| statement | base | new | new / base |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        run(f"sqlite:///{directory}/bench.db", driver_select, base_cursor)
    if args.postgres:
        run(args.postgres, driver_select, base_cursor)


if __name__ == "__main__":
    main()
