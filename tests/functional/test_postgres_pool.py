"""PostgreSQL connections the server cut while they sat in certok's pool (certok/db/engine.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, exc, text

from certok.db import engine as engine_module
from certok.db.engine import make_engine


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
