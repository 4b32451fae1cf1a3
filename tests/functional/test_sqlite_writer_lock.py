"""SQLite writers queue on certok's writer lock (threads and processes), instead of sleeping in
SQLite's busy handler; reads never wait for it."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
import time
from pathlib import Path

from sqlalchemy import func, select, text

from certok.db.engine import make_engine, transaction
from certok.db.migrate import upgrade
from certok.db.models import Tenant
from certok.db.sessions import make_session_factory

HOLD_SECONDS = 2.0  # long enough that a busy machine's delays stay well inside it


def _database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'certok.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def _hold_the_writer(url: str, entered: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    sessions = make_session_factory(make_engine(url))
    with transaction(sessions) as session:
        session.add(Tenant(name="holder", disabled=False, created_at=dt.datetime.now(dt.UTC)))
        session.flush()
        entered.set()
        time.sleep(HOLD_SECONDS)


def test_a_writer_in_another_process_waits_for_the_commit(tmp_path: Path) -> None:
    url = _database(tmp_path)
    context = multiprocessing.get_context("fork")
    entered = context.Event()
    holder = context.Process(target=_hold_the_writer, args=(url, entered))
    holder.start()
    try:
        assert entered.wait(10)
        sessions = make_session_factory(make_engine(url))
        # A read does not wait for the writer.
        started = time.monotonic()
        with sessions() as session:
            session.execute(text("SELECT 1"))
        assert time.monotonic() - started < HOLD_SECONDS / 2
        # A write waits on the lock, and once inside sees the other process's commit.
        with transaction(sessions) as session:
            waited = time.monotonic() - started
            names = session.scalars(select(Tenant.name)).all()
        assert waited >= HOLD_SECONDS * 0.8
        assert names == ["holder"]
    finally:
        holder.join(10)
    assert holder.exitcode == 0
    assert (tmp_path / "certok.db-writer.lock").stat().st_mode & 0o777 == 0o600


def test_many_threads_write_without_busy_errors(tmp_path: Path) -> None:
    url = _database(tmp_path)
    engine = make_engine(url)
    # A busy timeout of 0 turns any collision SQLite itself would see into an error.
    engine.pool.dispose()
    sessions = make_session_factory(engine)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for round_ in range(20):
                with transaction(sessions) as session:
                    session.execute(text("PRAGMA busy_timeout=0"))
                    session.add(
                        Tenant(
                            name=f"t{index}-{round_}",
                            disabled=False,
                            created_at=dt.datetime.now(dt.UTC),
                        )
                    )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with sessions() as session:
        assert session.scalar(select(func.count(Tenant.id))) == 16 * 20


def test_nested_transactions_in_one_thread_do_not_deadlock(tmp_path: Path) -> None:
    sessions = make_session_factory(make_engine(_database(tmp_path)))
    with transaction(sessions) as outer:
        outer.execute(text("SELECT 1"))
        # Re-entrant: a helper that opens its own read-only transaction inside one.
        with transaction(sessions) as inner:
            inner.execute(text("SELECT 1"))
