"""Opening certok's store: the database (migrated) and the key-encryption box."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from certok.crypto import SecretBox
from certok.db import migrate
from certok.db.engine import database_threads, make_engine, make_session_factory
from certok.settings import Settings


@dataclass
class Store:
    engine: Engine
    sessions: sessionmaker[Session]
    box: SecretBox


def open_store(settings: Settings, *, upgrade: bool = True) -> Store:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.effective_database_url, threads=database_threads(settings.worker_threads)
    )
    if upgrade:
        migrate.upgrade(engine)
    box = SecretBox.from_settings(settings.secret_key, settings.effective_secret_key_file)
    return Store(engine=engine, sessions=make_session_factory(engine), box=box)
