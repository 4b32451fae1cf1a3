"""PostgreSQL connections the server cut while they sat in certok's pool (certok/db/engine.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, exc, make_url, text

from certok.db import engine as engine_module
from certok.db.engine import make_engine
from certok.errors import ConfigurationError


@pytest.fixture
def postgres(database_url: str) -> Iterator[tuple[Engine, Engine]]:
    """(certok's engine, an admin engine that can cut its connections), PostgreSQL only."""
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's connection pool")
    engine = make_engine(database_url, threads=2)
    admin = make_engine(database_url, threads=1)
    yield engine, admin
    engine.dispose()
    admin.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def cut(admin: Engine, pid: int) -> None:
    with admin.begin() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()


def test_an_idle_connection_the_server_cut_is_replaced_before_use(
    postgres: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, admin = postgres
    first = backend_pid(engine)
    cut(admin, first)
    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)  # every pooled one is idle
    second = backend_pid(engine)  # no error: the ping found it dead, the pool connected anew
    assert second != first
    assert backend_pid(engine) == second  # the new one is pooled and pings fine


def test_a_connection_in_steady_use_is_not_pinged(
    postgres: tuple[Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, admin = postgres
    first = backend_pid(engine)
    cut(admin, first)
    monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 3600.0)
    # Not pinged, so the transaction that gets it fails once (a restart under load costs the
    # transactions in flight) and the pool is invalidated: the next one connects anew.
    with pytest.raises(exc.OperationalError) as failed:
        backend_pid(engine)
    assert failed.value.connection_invalidated
    assert backend_pid(engine) != first


def _prepared_after(engine: Engine, runs: int) -> int:
    """How many statements the server holds prepared for one connection after it ran the same
    query `runs` times."""
    with engine.connect() as connection:
        for _ in range(runs):
            connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one()
        count = connection.execute(text("SELECT count(*) FROM pg_prepared_statements"))
        return int(count.scalar_one())


def _with_threshold(database_url: str, value: str) -> str:
    url = make_url(database_url).update_query_dict({"prepare_threshold": value})
    return url.render_as_string(hide_password=False)


def test_a_statement_is_prepared_from_its_second_run(postgres: tuple[Engine, Engine]) -> None:
    """psycopg's own default waits for a fifth run on each connection of the pool."""
    engine, _ = postgres
    assert _prepared_after(engine, 1) == 0
    engine.dispose()
    assert _prepared_after(engine, 2) >= 1


@pytest.mark.parametrize(("runs", "prepared"), [(5, False), (6, True)])
def test_the_database_url_sets_the_threshold(
    postgres: tuple[Engine, Engine], runs: int, prepared: bool
) -> None:
    """`prepare_threshold=5`: prepared once it has run 5 times, at its sixth run."""
    engine = make_engine(_with_threshold(postgres[0].url.render_as_string(False), "5"))
    try:
        assert (_prepared_after(engine, runs) >= 1) is prepared
    finally:
        engine.dispose()


def test_none_in_the_database_url_turns_preparing_off(postgres: tuple[Engine, Engine]) -> None:
    """For a pooler that moves transactions between server connections (PgBouncer)."""
    engine = make_engine(_with_threshold(postgres[0].url.render_as_string(False), "none"))
    try:
        assert _prepared_after(engine, 20) == 0
    finally:
        engine.dispose()


def test_a_threshold_that_is_not_a_number_is_refused_naming_the_setting() -> None:
    url = "postgresql+psycopg://certok@db.invalid/certok?prepare_threshold=often"
    with pytest.raises(ConfigurationError, match=r"database_url: prepare_threshold='often'"):
        make_engine(url)
