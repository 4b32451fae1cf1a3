"""What certok keeps, opened: the database (migrated, with its writer) and the key-encryption
box. (Not `certok.http01.store`, which holds the HTTP-01 challenge tokens.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from certok.crypto import SecretBox
from certok.db import migrate
from certok.db.engine import SessionFactory, database_threads, make_engine, opened
from certok.db.files import (
    database_is_empty,
    empty_database_message,
    prepare_data_dir,
    prepare_sqlite_file,
    sqlite_file,
)
from certok.db.sessions import make_session_factory
from certok.errors import ConfigurationError
from certok.settings import Settings


@dataclass
class Store:
    engine: Engine
    sessions: SessionFactory
    box: SecretBox

    def close(self) -> None:
        """Close every database connection: the ones apply's readers keep first (they are
        outside the pool, and a SQLite connection left open keeps its write-ahead log from
        being folded into the file), then the pool's."""
        try:
            opened(self.sessions).release_kept_connections()
        finally:
            self.engine.dispose()


def open_store(
    settings: Settings, *, upgrade: bool = True, writer_socket: Path | None = None
) -> Store:
    """Open the data directory, the database (migrated unless `upgrade` is false) and the key
    box; `writer_socket`: this process sends its writes to the writer process there."""
    prepare_data_dir(settings.data_dir)
    url = settings.effective_database_url
    database = sqlite_file(url)
    key_file = settings.effective_secret_key_file
    # Read before anything creates the key file: an existing one means this installation
    # has started before, so it had a database.
    had_key = not settings.secret_key and key_file.exists()
    refuse_empty = had_key and not settings.allow_empty_database
    if refuse_empty and database is not None and _empty_file(database):
        # Refused before anything creates the file: a second start must refuse as well.
        raise ConfigurationError(empty_database_message(str(database), key_file))
    if database is not None:
        prepare_sqlite_file(database)
    engine = make_engine(url, threads=database_threads(settings.worker_threads))
    if upgrade:
        if refuse_empty and database_is_empty(engine, database):
            engine.dispose()
            raise ConfigurationError(
                empty_database_message(str(database or engine.url.render_as_string()), key_file)
            )
        migrate.upgrade(engine)
    box = SecretBox.from_settings(settings.secret_key, key_file)
    return Store(
        engine=engine, sessions=make_session_factory(engine, writer_socket=writer_socket), box=box
    )


def _empty_file(database: Path) -> bool:
    try:
        return database.stat().st_size == 0
    except FileNotFoundError:
        return True
