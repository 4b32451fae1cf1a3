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
from typing import Any, NamedTuple

from sqlalchemy import Connection, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.elements import BindParameter

_NAMED_PARAMSTYLES = ("pyformat", "named")
Processor = Callable[[Any], Any] | None


class StatementRows(NamedTuple):
    """What the statement returned: its rows (attribute access by column key) and rowcount."""

    rows: Sequence[Any]
    rowcount: int

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any | None:
        return self.rows[0][0] if self.rows else None


# How one of the caller's parameters reaches the driver: (the caller's key, its name in the
# SQL (a plain parameter) or its values' names there (an expanding one: name_1, name_2, ...),
# processor, default, expanding).
_Slot = tuple[str, Any, Processor, Any, bool]


@dataclass(frozen=True)
class _Rendered:
    sql: str
    # Named parameters: one slot per parameter. Positional: one per place in the SQL, in its
    # order (an expanding parameter's values in one).
    slots: tuple[_Slot, ...]
    positional: bool
    results: tuple[Processor, ...]
    processed: bool  # whether any of `results` is a processor
    # The one slot, when the statement takes one expanding parameter's unprocessed values
    # and nothing else (apply's read of polled codes): its values go as they are.
    only_values: _Slot | None


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
        self._rendered: dict[Any, _Rendered] = {}
        self._bases: dict[str, tuple[dict[str, BindParameter[Any]], list[str]]] = {}
        # The expanding parameters' keys (the same on every dialect), once compiled.
        self._expanding_keys: list[str] | None = None
        self._lock = threading.Lock()

    @property
    def statement(self) -> ClauseElement:
        """The Core statement, as `Connection.execute` would take it."""
        return self._statement  # type: ignore[no-any-return]

    def run(self, connection: Connection, parameters: Mapping[str, Any]) -> StatementRows:
        """The statement's rows (as `row_type` tuples) and rowcount."""
        rows, rowcount = self._execute(connection, parameters)
        return StatementRows(rows, rowcount)

    def rows(self, connection: Connection, parameters: Mapping[str, Any]) -> Sequence[Any]:
        """The statement's rows alone: for a read whose every call counts."""
        return self._execute(connection, parameters)[0]

    def _execute(
        self, connection: Connection, parameters: Mapping[str, Any]
    ) -> tuple[Sequence[Any], int]:
        dialect = connection.dialect
        if not self._driver_values and dialect.paramstyle not in _NAMED_PARAMSTYLES:
            result = connection.execute(self._statement, dict(parameters))
            return (result.all() if result.returns_rows else []), result.rowcount
        keys = self._expanding_keys
        rendered = (
            self._rendered.get((dialect.name, len(parameters[keys[0]])))
            if keys is not None and len(keys) == 1
            else None
        ) or self._render(dialect, parameters)
        only = rendered.only_values
        if only is None:
            sent = _driver_parameters(rendered, parameters)
        elif rendered.positional:
            sent = tuple(parameters[only[0]])
        else:
            sent = dict(zip(only[1], parameters[only[0]], strict=True))
        rows, rowcount = run_on_cursor(
            connection, rendered.sql, sent, fetch=self.row_type is not None
        )
        if not rows:
            return [], rowcount
        make = self.row_type._make
        processors = rendered.results
        if not rendered.processed:
            return [make(row) for row in rows], rowcount
        return [
            make([p(v) if p is not None else v for p, v in zip(processors, row, strict=True)])
            for row in rows
        ], rowcount

    def _render(self, dialect: Dialect, parameters: Mapping[str, Any]) -> _Rendered:
        keys = self._expanding_keys
        if keys is None:
            keys = self._base_binds(dialect)[1]
        # The SQL differs by dialect and by the length of each IN list.
        cache_key: Any = dialect.name
        if len(keys) == 1:
            cache_key = (dialect.name, len(parameters[keys[0]]))
        elif keys:
            cache_key = (dialect.name, tuple([len(parameters[key]) for key in keys]))
        rendered = self._rendered.get(cache_key)
        if rendered is not None:
            return rendered
        binds, expanding_keys = self._base_binds(dialect)
        lengths = [len(parameters[key]) for key in expanding_keys]
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
        slots: dict[str, _Slot] = {}
        for name, bind in binds.items():
            process = bind.type.bind_processor(dialect) if typed else None
            if bind.expanding:
                length = dict(zip(expanding_keys, lengths, strict=True))[str(bind.key)]
                names = tuple(f"{name}_{n}" for n in range(1, length + 1))
                slots[name] = (str(bind.key), names, process, None, True)
            else:
                default = _REQUIRED if bind.required else bind.effective_value
                slots[name] = (str(bind.key), name, process, default, False)
        results = tuple(
            column.type.result_processor(dialect, None) if typed else None for column in columns
        )
        ordered = (
            _in_sql_order(slots, compiled.positiontup or ())
            if compiled.positional
            else tuple(slots.values())
        )
        only = ordered[0] if len(ordered) == 1 else None
        rendered = _Rendered(
            sql=compiled.string,
            slots=ordered,
            positional=bool(compiled.positional),
            results=results,
            processed=any(results),
            only_values=only if only is not None and only[4] and only[2] is None else None,
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
                self._expanding_keys = base[1]
        return base


def _in_sql_order(slots: dict[str, _Slot], order: Sequence[str]) -> tuple[_Slot, ...]:
    """`slots` (by name in the SQL) in the order the SQL takes their values (`order`: the
    compiled statement's positional names, an expanding parameter's as name_1, name_2, ...)."""
    # An expanding parameter's values stand together from its first: one slot for the run.
    first_values = {slot[1][0]: slot for slot in slots.values() if slot[4] and slot[1]}
    placed = [slots.get(name) or first_values.get(name) for name in order]
    return tuple(slot for slot in placed if slot is not None)


def _driver_parameters(rendered: _Rendered, parameters: Mapping[str, Any]) -> Any:
    """The caller's `parameters` as the driver takes them: a dict of named parameters, or a
    tuple in the SQL's order (a tuple, as `Connection.exec_driver_sql` takes one statement's
    parameters: listeners of the cursor events may run the statement again)."""
    positional = rendered.positional
    sent: Any = [] if positional else {}
    for key, names, process, default, expanding in rendered.slots:
        if expanding:
            items = parameters[key]
            if process is not None:
                items = [process(item) for item in items]
            if positional:
                sent.extend(items)
            else:
                sent.update(zip(names, items, strict=True))
            continue
        value = parameters.get(key, default)
        if value is _REQUIRED:
            raise KeyError(f"no value for the statement's parameter {key!r}")
        if process is not None:
            value = process(value)
        if positional:
            sent.append(value)
        else:
            sent[names] = value
    return tuple(sent) if positional else sent


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
