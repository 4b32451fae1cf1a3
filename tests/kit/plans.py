"""SQLite's plans for the statements a piece of code runs (EXPLAIN QUERY PLAN), for tests that
a read takes the index it was written for, not one that walks every row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event


def sqlite_plans(
    engine: Engine, wanted: Callable[[str], bool], run: Callable[[], Any]
) -> list[str]:
    """The plan (its lines joined) of each statement `run()` sent on `engine` that `wanted`
    picks (by its SQL), in order."""
    statements: list[tuple[str, Any]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if wanted(statement):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    plans = []
    with engine.connect() as connection:
        for statement, parameters in statements:
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plans.append(" ".join(str(row[-1]) for row in plan))
    return plans
