"""`indexed_by` (certok/db/sqlite_index_hints.py): the compiler puts SQLite's INDEXED BY right
after the table's name in FROM, a join's left side included, and nowhere else; other
dialects do not see it."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from certok.db.sqlite_index_hints import indexed_by

_METADATA = MetaData()
_T = Table("t", _METADATA, Column("a", Integer), Column("b", Integer))
_U = Table("u", _METADATA, Column("a", Integer))


def _sql(statement: object, dialect: object) -> str:
    return " ".join(str(statement.compile(dialect=dialect)).split())  # type: ignore[attr-defined]


def test_the_hint_follows_the_tables_name_in_from() -> None:
    statement = indexed_by(select(_T.c.a).where(_T.c.b == bindparam("b")), _T, "ix_t_b")
    assert _sql(statement, sqlite.dialect()) == "SELECT t.a FROM t INDEXED BY ix_t_b WHERE t.b = ?"


def test_a_joins_left_side_takes_it_and_a_subquery_of_the_same_table_does_not() -> None:
    statement = indexed_by(
        select(_T.c.a, _U.c.a)
        .select_from(_T.outerjoin(_U, _U.c.a == _T.c.a))
        .where(_T.c.b.in_(select(_T.c.b))),
        _T,
        "ix_t_b",
    )
    assert _sql(statement, sqlite.dialect()) == (
        "SELECT t.a, u.a AS a_1 FROM t INDEXED BY ix_t_b LEFT OUTER JOIN u ON u.a = t.a "
        "WHERE t.b IN (SELECT t.b FROM t)"
    )


def test_other_dialects_do_not_see_it() -> None:
    statement = indexed_by(select(_T.c.a), _T, "ix_t_b")
    assert _sql(statement, postgresql.dialect()) == "SELECT t.a FROM t"
    assert "INDEXED" not in _sql(select(_T.c.a), sqlite.dialect())
