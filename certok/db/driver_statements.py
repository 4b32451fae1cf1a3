"""One hot SELECT run on the driver's own cursor, rows as named tuples.

SQLAlchemy's work around each execution (its execution context, rendering an expanding IN,
processing every value of the result) costs several times what SQLite itself spends on a
short indexed read. For a statement that runs for every batch of a hot path (apply's polls
that miss the cache of issued answers), `DriverSelect` renders the statement once per number
of values in its IN list, runs it on the DBAPI cursor of a SQLAlchemy connection, and returns
the driver's values untouched: text for SQLite's times, as `certok.db.models.base.untyped`
columns give them everywhere else.

It runs through `Connection._cursor_execute`, SQLAlchemy's own path for statements its
dialects run on a cursor: listeners of the cursor events see it, and a driver error is
raised as `DBAPIError` with the connection invalidated on a disconnect, as from `execute`.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Select, TableClause


class DriverSelect:
    """`statement` (a SELECT whose one expanding parameter is `expanding`), run on the
    driver's cursor. `sqlite_index` (table, index): on SQLite, the table is read through
    that index (`INDEXED BY`, which SQLAlchemy's SQLite dialect does not render); it must
    be the statement's first FROM."""

    def __init__(
        self,
        statement: Select[Any],
        expanding: str,
        *,
        sqlite_index: tuple[TableClause, str] | None = None,
    ) -> None:
        # `run` passes the expanding parameter's values only.
        others = sorted(set(statement.compile().binds) - {expanding})
        if others:
            raise ValueError(f"{expanding} must be the statement's only parameter, not {others}")
        self._statement = statement
        self._expanding = expanding
        self._sqlite_index = sqlite_index
        # Rows come back in the select's column order.
        names = [str(column.key) for column in statement.selected_columns]
        self.row_type: Any = namedtuple("DriverRow", names)  # type: ignore[misc]
        self._rendered: dict[tuple[str, int], tuple[str, bool]] = {}
        self._lock = threading.Lock()

    def run(self, connection: Connection, values: Sequence[Any]) -> list[Any]:
        """The rows for `values` (at least one), as `row_type` tuples of the driver's values."""
        sql, positional = self._sql(connection.dialect, len(values))
        parameters: Any = (
            tuple(values)
            if positional
            else {f"{self._expanding}_{n}": value for n, value in enumerate(values, 1)}
        )
        rows, _ = run_on_cursor(connection, sql, parameters, fetch=True)
        make = self.row_type._make
        return [make(row) for row in rows]

    def _sql(self, dialect: Dialect, count: int) -> tuple[str, bool]:
        key = (dialect.name, count)
        rendered = self._rendered.get(key)
        if rendered is None:
            compiled = self._statement.params({self._expanding: [""] * count}).compile(
                dialect=dialect, compile_kwargs={"render_postcompile": True}
            )
            sql = compiled.string
            if self._sqlite_index is not None and dialect.name == "sqlite":
                sql = _indexed_by(sql, *self._sqlite_index)
            rendered = (sql, compiled.positional)
            with self._lock:
                self._rendered[key] = rendered
        return rendered


def run_on_cursor(
    connection: Connection, sql: str, parameters: Any, *, fetch: bool
) -> tuple[list[Any], int]:
    """Run `sql` on a DBAPI cursor of `connection`: the rows (when `fetch`) and the rowcount."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        # SQLAlchemy's own way to run a statement on a cursor (its dialects' special cases use
        # it): the cursor events, echo, and a driver error raised as its DBAPIError, the
        # connection invalidated when the error is a disconnect.
        connection._cursor_execute(cursor, sql, parameters)
        try:
            rows: list[Any] = list(cursor.fetchall()) if fetch else []
        except Exception as error:
            connection._handle_dbapi_exception(error, sql, parameters, cursor, None)
            raise  # not reached: the handler raises
        return rows, int(cursor.rowcount)
    finally:
        cursor.close()


def _indexed_by(sql: str, table: TableClause, index: str) -> str:
    """`sql` with its first FROM, `table`, read through `index` (SQLite's INDEXED BY)."""
    plain = f"\nFROM {table.name} "
    if plain not in sql:
        raise ValueError(f"{table.name} is not the statement's first FROM")
    return sql.replace(plain, f"\nFROM {table.name} INDEXED BY {index} ", 1)
