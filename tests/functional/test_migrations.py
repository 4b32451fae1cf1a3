"""The Alembic migrations produce exactly the schema the models describe (on both databases)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from certok.db import migrate
from certok.db.engine import make_engine
from certok.db.models import Base
from tests.conftest import IN_CI, POSTGRES_URL, empty_postgres_database


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = make_engine(database_url)  # the fixture already ran every migration
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models differ from migrations; add a migration: {diff}"


def test_a_schema_a_newer_release_migrated_is_left_alone(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Mid rolling upgrade, a node of the previous release starts on the newer schema.
    engine = make_engine(database_url)
    read = text("SELECT version_num FROM alembic_version")
    with engine.begin() as connection:
        ours = connection.execute(read).scalar_one()
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    try:
        with caplog.at_level(logging.WARNING, logger="certok.db.migrate"):
            migrate.upgrade(engine)
        with engine.connect() as connection:
            assert connection.execute(read).scalar_one() == "f00d"
        assert "revision f00d, which this certok does not know" in caplog.text
    finally:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": ours})
        engine.dispose()


def test_nodes_starting_at_once_on_a_fresh_postgres_database_both_migrate() -> None:
    # Every node migrates at start: two at once must not fail on each other's tables.
    if not POSTGRES_URL:
        if IN_CI:
            pytest.fail("CI=true but CERTOK_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL not configured (set CERTOK_TEST_POSTGRES_URL)")
    with empty_postgres_database(POSTGRES_URL, "certok_migrate") as url:
        engines = [make_engine(url) for _ in range(2)]
        start = threading.Barrier(len(engines))

        def node_start(engine: Engine) -> None:
            start.wait()
            migrate.upgrade(engine)

        try:
            with ThreadPoolExecutor(len(engines)) as pool:
                list(pool.map(node_start, engines))
            with engines[0].connect() as connection:
                versions = connection.execute(text("SELECT count(*) FROM alembic_version"))
                assert versions.scalar() == 1
        finally:
            for engine in engines:
                engine.dispose()
