"""Shared fixtures: one suite, two databases (SQLite always; PostgreSQL when configured).

PostgreSQL runs when CERTOK_TEST_POSTGRES_URL is set (scripts/test sets it when a server
answers on 127.0.0.1:5432); in CI (CI=true) a missing PostgreSQL is an error, not a skip.

The test depth (tests/depth.py: CERTOK_TEST_DEPTH, ``ci`` or ``deep``) picks the Hypothesis
profile loaded here; at the deep one the tests marked ``deep`` run without a per-test timeout.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from certok.crypto import SecretBox
from certok.db import migrate
from certok.db.engine import make_engine
from certok.db.models import Base
from certok.db.sessions import make_session_factory
from certok.persistence import Store
from tests.depth import CI_HYPOTHESIS_EXAMPLES, DEEP, DEEP_HYPOTHESIS_EXAMPLES, DEPTH

POSTGRES_URL = os.environ.get("CERTOK_TEST_POSTGRES_URL")
IN_CI = os.environ.get("CI") == "true"

# Tests that set no max_examples get these; a busy machine must not turn a deep run's slow
# example into a failure, so the deep profile has no deadline.
hypothesis_settings.register_profile("ci", max_examples=CI_HYPOTHESIS_EXAMPLES)
hypothesis_settings.register_profile("deep", max_examples=DEEP_HYPOTHESIS_EXAMPLES, deadline=None)
hypothesis_settings.load_profile(DEPTH)


def pytest_report_header(config: pytest.Config) -> str:
    return f"certok test depth: {DEPTH} (CERTOK_TEST_DEPTH; see tests/depth.py)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not DEEP:
        return
    for item in items:
        deep = item.get_closest_marker("deep")
        if deep is not None and not deep.kwargs.get("rounds"):
            # A deep run takes as long as its depth needs: this timeout overrides the test's.
            # (A test run in more rounds keeps its timeout: each round is one CI run.)
            item.add_marker(pytest.mark.timeout(0), append=False)


def _migrate(url: str) -> None:
    """The schema at head; the engine's connections are closed, not left to the collector."""
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not POSTGRES_URL:
        yield None
        return
    with empty_postgres_database(POSTGRES_URL, "certok_test") as url:
        _migrate(url)
        yield url


@contextlib.contextmanager
def empty_postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new database (no tables) on the server of `server_url`: its URL; dropped after."""
    admin_url = make_url(server_url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
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
        _migrate(url)
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
