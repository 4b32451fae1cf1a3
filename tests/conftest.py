"""Shared fixtures: one suite, two databases (SQLite always; PostgreSQL when configured).

PostgreSQL runs when CERTOK_TEST_POSTGRES_URL is set (scripts/test sets it when a server
answers on 127.0.0.1:5432); in CI (CI=true) a missing PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from certok.crypto import SecretBox
from certok.db import migrate
from certok.db.engine import make_engine, make_session_factory
from certok.db.models import Base
from certok.store import Store

POSTGRES_URL = os.environ.get("CERTOK_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not POSTGRES_URL:
        yield None
        return
    admin_url = make_url(POSTGRES_URL)
    name = f"certok_test_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(make_engine(url))
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_database: str | None
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'certok.db'}"
        migrate.upgrade(make_engine(url))
        yield url
        return
    if postgres_database is None:
        if IN_CI:
            pytest.fail("CI=true but CERTOK_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL not configured (set CERTOK_TEST_POSTGRES_URL)")
    yield postgres_database
    # Leave an empty database for the next test.
    engine = make_engine(postgres_database)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url)
    yield Store(
        engine=engine,
        sessions=make_session_factory(engine),
        box=SecretBox(secrets.token_bytes(32)),
    )
    engine.dispose()
