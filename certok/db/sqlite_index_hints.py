"""A SELECT's table read through a named index on SQLite (`INDEXED BY`), by the compiler.

SQLAlchemy carries a table hint on the statement (`Select.with_hint(table, text, dialect)`)
and each dialect's compiler renders it where its SQL takes one; the SQLite dialect renders
none. SQLite takes its one kind of table hint, `INDEXED BY name` (or `NOT INDEXED`), right
after the table's name in the FROM clause, where the hook below puts the hints given for
"sqlite". Other dialects do not see them (`with_hint` keeps a hint to its dialect).

A read takes a named index where SQLite, which without statistics prefers a unique index,
would pick one that needs a table page the named one holds in its rows.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

S = TypeVar("S", bound=Select[Any])


def indexed_by(statement: S, table: Table, index: str) -> S:
    """`statement` with `table` read through `index` on SQLite; unchanged elsewhere."""
    return statement.with_hint(table, f"INDEXED BY {index}", "sqlite")


@compiles(Table, "sqlite")
def _table_with_its_hint(table: Table, compiler: SQLCompiler, **kw: Any) -> str:
    sql: str = compiler.visit_table(table, **kw)  # type: ignore[no-untyped-call]
    # `fromhints`: the statement's hints for this dialect by table, which the compiler hands
    # to each FROM element (a join's sides included); `asfrom`: the table's place in FROM,
    # not a column's qualifier.
    hints = kw.get("fromhints")
    if kw.get("asfrom") and hints and table in hints:
        sql += " " + hints[table]
    return sql
