"""SQLite's plans for the statements a piece of code runs (EXPLAIN QUERY PLAN), for tests that
a read takes the index it was written for, not one that walks every row; and their programs
(EXPLAIN), for tests of which rows a statement reads only when it needs them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine, event


def _sent(engine: Engine, wanted: Callable[[str], bool], run: Callable[[], Any]) -> list[Any]:
    """The statements (with their parameters) `run()` sent on `engine` that `wanted` picks."""
    statements: list[tuple[str, Any]] = []

    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if wanted(statement):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return statements


def sqlite_plans(
    engine: Engine, wanted: Callable[[str], bool], run: Callable[[], Any]
) -> list[str]:
    """The plan (its lines joined) of each statement `run()` sent on `engine` that `wanted`
    picks (by its SQL), in order."""
    plans = []
    with engine.connect() as connection:
        for statement, parameters in _sent(engine, wanted, run):
            plan = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plans.append(" ".join(str(row[-1]) for row in plan))
    return plans


# One instruction of a SQLite program: (opcode, p1, p2, p3).
Instruction = tuple[str, int, int, int]


def sqlite_programs(
    engine: Engine, wanted: Callable[[str], bool], run: Callable[[], Any]
) -> list[list[Instruction]]:
    """The program (EXPLAIN) of each statement `run()` sent on `engine` that `wanted` picks,
    with the table cursor's root page: an `OpenRead`'s p2 is the root page it opens."""
    programs = []
    with engine.connect() as connection:
        for statement, parameters in _sent(engine, wanted, run):
            rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters).all()
            programs.append([(str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows])
    return programs


def table_root_page(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        page = connection.exec_driver_sql(
            "SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).scalar()
    assert page is not None, table
    return int(page)


_JUMPS_IF_NULL_OR_NOT = ("NotNull", "IsNull")


def reads_of_table_are_guarded(program: Sequence[Instruction], root_page: int) -> bool:
    """Whether the program seeks the table at `root_page` only on demand (a `DeferredSeek`
    from an index) and reads a column of it only behind a NULL test's jump (a CASE's guard):
    a row that takes the jump never costs the table's page."""
    cursors = {p1 for op, p1, p2, _ in program if op == "OpenRead" and p2 == root_page}
    if not cursors or not any(op == "DeferredSeek" and p3 in cursors for op, _, _, p3 in program):
        return False
    reads = [n for n, (op, p1, _, _) in enumerate(program) if op == "Column" and p1 in cursors]
    return bool(reads) and all(n > 0 and program[n - 1][0] in _JUMPS_IF_NULL_OR_NOT for n in reads)
