"""Fixtures shared by the functional tests of the DNS zone: a real database (SQLite, and
PostgreSQL when configured, like the rest of the suite) with the rows certok's other parts
write, and an asyncio loop in a background thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import make_engine
from certok.db.sessions import make_session_factory
from tests.kit.loop import LoopThread
from tests.kit.rows import Zone, make_zone


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def zone(sessions: sessionmaker[Session]) -> Zone:
    return make_zone(sessions)
