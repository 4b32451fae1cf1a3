"""`CursorStatement` (certok/db/cursor_statements.py) with the driver's values, on both
databases: the same rows as SQLAlchemy's own execution, with the driver's values, parameters
in the order the SQL takes them where the driver's are positional, seen by the cursor events,
and a lost connection reported and dropped as `Connection.execute` would."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.exc import DBAPIError

from certok.db.cursor_statements import CursorStatement
from certok.db.engine import opened, transaction
from certok.db.models import VerificationCode
from certok.persistence import Store
from certok.tenants import service as tenants

_CODES = VerificationCode.__table__
_BY_CODE = select(_CODES.c.code, _CODES.c.tenant_id, _CODES.c.domains, _CODES.c.expires_at).where(
    _CODES.c.code.in_(bindparam("b_codes", expanding=True))
)
NOW = dt.datetime(2026, 12, 5, 12, 0, 0, 123456, tzinfo=dt.UTC)


def _stored_codes(store: Store, count: int) -> list[str]:
    with transaction(store.sessions) as session:
        tenant_id = tenants.create_tenant(session, "driver").id
        codes = [f"{n:016x}" for n in range(count)]
        session.execute(
            _CODES.insert(),
            [
                {"code": code, "tenant_id": tenant_id, "challenge_type": "dns",
                 "domains": f"n{n}.example.com", "created_at": NOW, "expires_at": NOW}
                for n, code in enumerate(codes)
            ],
        )  # fmt: skip
    return codes


@pytest.mark.parametrize("count", [1, 2, 7])
def test_the_rows_are_sqlalchemys_with_the_drivers_values(store: Store, count: int) -> None:
    codes = _stored_codes(store, 10)
    wanted = [*codes[:count], "not-stored"]
    driver = CursorStatement(_BY_CODE, driver_values=True)
    with opened(store.sessions).read_connection() as connection:
        rows = driver.run(connection, {"b_codes": wanted}).rows
        typed = connection.execute(_BY_CODE, {"b_codes": wanted}).all()
    assert sorted(row.code for row in rows) == sorted(codes[:count])
    by_code = {row.code: row for row in typed}
    for row in rows:
        assert (row.tenant_id, row.domains) == (
            by_code[row.code].tenant_id,
            by_code[row.code].domains,
        )
        # The driver's own value: SQLite's text, PostgreSQL's naive datetime; both say NOW.
        stored = row.expires_at
        if isinstance(stored, str):
            stored = dt.datetime.fromisoformat(stored)
        assert stored.replace(tzinfo=dt.UTC) == by_code[row.code].expires_at == NOW


def test_listeners_of_the_cursor_events_see_the_statement(store: Store) -> None:
    codes = _stored_codes(store, 3)
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        with opened(store.sessions).read_connection() as connection:
            CursorStatement(_BY_CODE, driver_values=True).run(connection, {"b_codes": codes})
    finally:
        event.remove(store.engine, "before_cursor_execute", note)
    [(statement, parameters)] = seen
    assert "verification_codes" in statement
    assert sorted(parameters.values() if isinstance(parameters, dict) else parameters) == codes


def test_parameters_around_the_expanding_one_go_where_the_sql_takes_them(store: Store) -> None:
    codes = _stored_codes(store, 4)
    with opened(store.sessions).read_connection() as connection:
        tenant_id = connection.execute(select(_CODES.c.tenant_id).distinct()).scalar_one()
    statement = select(_CODES.c.code).where(
        _CODES.c.domains != bindparam("b_before"),
        _CODES.c.code.in_(bindparam("b_codes", expanding=True)),
        _CODES.c.tenant_id == bindparam("b_tenant"),
    )
    driver = CursorStatement(statement, driver_values=True)
    with opened(store.sessions).read_connection() as connection:
        rows = driver.run(
            connection,
            {"b_before": "n1.example.com", "b_codes": codes[:3], "b_tenant": tenant_id},
        ).rows
        with pytest.raises(KeyError, match="b_tenant"):
            driver.run(connection, {"b_before": "x", "b_codes": codes})
    assert sorted(row.code for row in rows) == [codes[0], codes[2]]


def test_a_lost_connection_is_raised_as_sqlalchemys_and_dropped(store: Store) -> None:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("a server that can drop the connection: PostgreSQL")
    codes = _stored_codes(store, 1)
    driver = CursorStatement(_BY_CODE, driver_values=True)
    factory = opened(store.sessions)
    with factory.read_connection() as connection:
        backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with store.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
            other.commit()
        with pytest.raises(DBAPIError) as raised:
            driver.run(connection, {"b_codes": codes})
    assert raised.value.connection_invalidated
    # The pool made a new connection: the next read works.
    with factory.read_connection() as connection:
        assert [row.code for row in driver.run(connection, {"b_codes": codes}).rows] == codes
