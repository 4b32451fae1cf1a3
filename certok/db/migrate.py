"""Schema migrations (Alembic), run by `certok db upgrade` and at `certok serve` start."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

log = logging.getLogger(__name__)

# PostgreSQL advisory lock key (any fixed number) held while migrating: nodes that start at
# once migrate one after another, the later ones finding the schema already up to date.
_MIGRATION_LOCK_KEY = 0x63657274


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database schema up to `revision` (default: the newest).

    A schema that a newer certok already migrated is left as it is: during a rolling upgrade
    (docs/deployment.md) a node of the previous release must still start on it.
    """
    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Released at commit: PostgreSQL's DDL runs in this same transaction.
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": _MIGRATION_LOCK_KEY})
        newer = unknown_revisions(config, connection)
        if newer:
            log.warning(
                "the database schema is at revision %s, which this certok does not know: a "
                "newer release migrated it; carrying on without migrating (finish the upgrade)",
                ", ".join(newer),
            )
            return
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def unknown_revisions(config: Config, connection: Connection) -> list[str]:
    """The database's current revisions that are not among this release's migrations."""
    current = MigrationContext.configure(connection).get_current_heads()
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    return sorted(revision for revision in current if revision not in known)
