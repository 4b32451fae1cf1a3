"""The Alembic migrations produce exactly the schema the models describe (on both databases)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from certok.db.engine import make_engine
from certok.db.models import Base


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = make_engine(database_url)  # the fixture already ran every migration
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == [], f"models differ from migrations; add a migration: {diff}"
