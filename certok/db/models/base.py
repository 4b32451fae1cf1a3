"""The column types and declarative base every table of certok's schema shares."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar, overload

from sqlalchemy import Column, ColumnElement, DateTime, String, Table, type_coerce
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use UTC-aware values")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: object
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


def untyped(column: Column[dt.datetime]) -> ColumnElement[str]:
    """`column` (a UTCDateTime) read as the driver returns it, for `stored_utc`: a hot read
    converts only the times it uses, without SQLAlchemy's per-value processing (which on
    SQLite parses the text with a regular expression)."""
    return type_coerce(column, String).label(column.key)


@overload
def stored_utc(value: None) -> None: ...
@overload
def stored_utc(value: str | dt.datetime) -> dt.datetime: ...
def stored_utc(value: str | dt.datetime | None) -> dt.datetime | None:
    """What UTCDateTime returns for `value`, a column read `untyped`: SQLite's text or
    PostgreSQL's naive datetime (both UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    # Every model is a plain table: Core statements built on `Model.__table__` type-check.
    __table__: ClassVar[Table]
