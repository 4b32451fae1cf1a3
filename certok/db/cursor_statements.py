"""A hot Core statement, compiled once, run on the driver's cursor.

SQLAlchemy's work around each execution (looking the statement up in its compiled cache, the
execution context, rendering an expanding IN, building the result) costs more certok CPU than
the driver's own round trip for a short statement. The worker's statements for each step of
each order (the order's load, its lease-fenced saves, the challenge material's INSERT), the
DNS process's zone refresh and apply's read of polled codes pay it several times per order.
`CursorStatement` compiles its statement once per dialect (and per length of each expanding
IN list) and runs it on the DBAPI cursor through `Connection._cursor_execute`, SQLAlchemy's
own path for statements its dialects run on a cursor: listeners of the cursor events see it,
and a driver error is raised as `DBAPIError` with the connection invalidated on a disconnect,
as from `execute`.

Its values are either typed (the default) or the driver's own:

- typed: parameters go through each bind's type (`UTCDateTime` stores naive UTC) and results
  through each column's (`UTCDateTime` reads aware UTC), so callers see what
  `Connection.execute` gives them. Only where the driver takes named parameters (psycopg's
  `%(name)s`); on SQLite the statement runs through `Connection.execute` unchanged (its writes
  are batched, and the gain there was not measured).
- `driver_values=True`: parameters go to the driver and results come back untouched (text for
  SQLite's times, as `certok.db.models.base.untyped` columns give them everywhere else), on
  every driver, positional parameters (SQLite's `?`) included: for a read whose every poll
  counts, such as apply's read of polled codes.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import BindParameter

_NAMED_PARAMSTYLES = ("pyformat", "named")
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class StatementRows:
    """What the statement returned: its rows (attribute access by column key) and rowcount."""

    rows: Sequence[Any]
    rowcount: int

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any | None:
        return self.rows[0][0] if self.rows else None


@dataclass(frozen=True)
class _Rendered:
    sql: str
    # (name in the SQL, the caller's key, processor, default): one per parameter.
    binds: tuple[tuple[str, str, Processor, Any], ...]
    # (the caller's key, processor): expanding parameters, rendered as key_1, key_2, ...
    expanding: tuple[tuple[str, Processor], ...]
    results: tuple[Processor, ...]
    # The parameters' names in the order the SQL takes them, where the driver's are
    # positional; None where they are named.
    positional: tuple[str, ...] | None


_REQUIRED = object()


class CursorStatement:
    """`statement` (a SELECT, or an INSERT / UPDATE / DELETE with or without RETURNING, or a
    `text()` with `.columns()`), run on the cursor: typed values where the driver takes named
    parameters, or the driver's values (`driver_values`) on every driver."""

    def __init__(self, statement: ClauseElement, *, driver_values: bool = False) -> None:
        self._statement: Any = statement
        self._driver_values = driver_values
        columns = _returned_columns(statement)
        keys = [str(column.key) for column in columns] if columns else []
        self.row_type: Any = namedtuple("CursorRow", keys, rename=True) if keys else None
        self._rendered: dict[tuple[str, tuple[int, ...]], _Rendered] = {}
        self._bases: dict[str, tuple[dict[str, BindParameter[Any]], list[str]]] = {}
        self._lock = threading.Lock()

    @property
    def statement(self) -> ClauseElement:
        """The Core statement, as `Connection.execute` would take it."""
        return self._statement  # type: ignore[no-any-return]

    def run(self, connection: Connection, parameters: Mapping[str, Any]) -> StatementRows:
        dialect = connection.dialect
        if not self._driver_values and dialect.paramstyle not in _NAMED_PARAMSTYLES:
            result = connection.execute(self._statement, dict(parameters))
            rows = result.all() if result.returns_rows else []
            return StatementRows(rows, result.rowcount)
        rendered = self._render(dialect, parameters)
        values: dict[str, Any] = {}
        for name, key, process, default in rendered.binds:
            value = parameters.get(key, default)
            if value is _REQUIRED:
                raise KeyError(f"no value for the statement's parameter {key!r}")
            values[name] = process(value) if process is not None else value
        for key, process in rendered.expanding:
            for n, item in enumerate(parameters[key], 1):
                values[f"{key}_{n}"] = process(item) if process is not None else item
        sent: Any = values
        if rendered.positional is not None:
            sent = tuple([values[name] for name in rendered.positional])
        rows, rowcount = run_on_cursor(
            connection, rendered.sql, sent, fetch=self.row_type is not None
        )
        if not rows:
            return StatementRows([], rowcount)
        make = self.row_type._make
        processors = rendered.results
        if not any(processors):
            return StatementRows([make(row) for row in rows], rowcount)
        return StatementRows(
            [
                make([p(v) if p is not None else v for p, v in zip(processors, row, strict=True)])
                for row in rows
            ],
            rowcount,
        )

    def _render(self, dialect: Dialect, parameters: Mapping[str, Any]) -> _Rendered:
        base = self._base_binds(dialect)
        lengths = tuple(len(parameters[key]) for key in base[1])
        cache_key = (dialect.name, lengths)
        rendered = self._rendered.get(cache_key)
        if rendered is not None:
            return rendered
        binds, expanding_keys = base
        if expanding_keys:
            # render_postcompile spells each IN list out (key_1, key_2, ...); it needs a value
            # for every parameter, which only shapes the SQL, never its values. (`params()`
            # is a SELECT's: an INSERT / UPDATE / DELETE takes no expanding parameter here.)
            placeholders: dict[str, Any] = {
                bind.key: None for bind in binds.values() if bind.required
            }
            for key, length in zip(expanding_keys, lengths, strict=True):
                placeholders[key] = [None] * length
            compiled = self._statement.params(placeholders).compile(
                dialect=dialect, compile_kwargs={"render_postcompile": True}
            )
        else:
            compiled = self._statement.compile(dialect=dialect)
        columns = _returned_columns(self._statement) or []
        typed = not self._driver_values
        rendered = _Rendered(
            sql=compiled.string,
            binds=tuple(
                (
                    name,
                    str(bind.key),
                    bind.type.bind_processor(dialect) if typed else None,
                    _REQUIRED if bind.required else bind.effective_value,
                )
                for name, bind in binds.items()
                if not bind.expanding
            ),
            expanding=tuple(
                (str(bind.key), bind.type.bind_processor(dialect) if typed else None)
                for bind in binds.values()
                if bind.expanding
            ),
            results=tuple(
                column.type.result_processor(dialect, None) if typed else None for column in columns
            ),
            positional=tuple(compiled.positiontup or ()) if compiled.positional else None,
        )
        with self._lock:
            self._rendered[cache_key] = rendered
        return rendered

    def _base_binds(self, dialect: Dialect) -> tuple[dict[str, BindParameter[Any]], list[str]]:
        """The statement's parameters by their name in the SQL, and its expanding ones' keys."""
        base = self._bases.get(dialect.name)
        if base is None:
            compiled = self._statement.compile(dialect=dialect)
            binds: dict[str, BindParameter[Any]] = dict(compiled.binds)
            base = (binds, [str(bind.key) for bind in binds.values() if bind.expanding])
            with self._lock:
                self._bases[dialect.name] = base
        return base


def _returned_columns(statement: Any) -> list[Any] | None:
    """The columns of the rows the statement returns, or None when it returns none."""
    columns = getattr(statement, "selected_columns", None)
    if columns is None:
        # An INSERT / UPDATE / DELETE: its RETURNING columns, if any.
        columns = getattr(statement, "exported_columns", None)
    return list(columns) if columns else None


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
