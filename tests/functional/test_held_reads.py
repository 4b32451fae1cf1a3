"""Read connections kept between reads (certok/db/held_reads.py), on both databases: kept
and reused, never kept after a failed read (which hands the others back to the pool too),
handed back once unused for too long, closed after the engine is disposed, at most `most` of
them, no transaction left open by a read, and no engine event listened to."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session, sessionmaker

from certok.crypto import SecretBox
from certok.db.engine import opened
from certok.db.held_reads import HeldReads
from certok.persistence import Store


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _driver(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def _checked_out(sessions: sessionmaker[Session]) -> int:
    return int(opened(sessions).engine.pool.checkedout())  # type: ignore[attr-defined]


def _read(connection: Connection) -> int:
    return int(connection.execute(text("SELECT 1")).scalar_one())


def _driver_in_transaction(connection: Connection) -> bool:
    driver = _driver(connection)
    if connection.dialect.name == "sqlite":
        return bool(driver.in_transaction)
    import psycopg

    return bool(driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


def test_a_connection_is_kept_and_reused_by_the_next_read(
    sessions: sessionmaker[Session],
) -> None:
    held = HeldReads(sessions, most=2)
    with held.connection() as first:
        assert _read(first) == 1
        driver = _driver(first)
    # Kept: still out of the pool, and neither SQLAlchemy nor the driver in a transaction.
    assert _checked_out(sessions) == 1
    assert not first.in_transaction() and not _driver_in_transaction(first)
    with held.connection() as second:
        assert _read(second) == 1
        assert _driver(second) is driver
    held.close()
    assert _checked_out(sessions) == 0


def test_a_failed_read_does_not_keep_its_connection(sessions: sessionmaker[Session]) -> None:
    held = HeldReads(sessions, most=2)
    with held.connection() as first, held.connection() as second:
        _read(first)
        _read(second)
        kept = _driver(first)  # given back last: the next read takes it
    assert _checked_out(sessions) == 2
    with pytest.raises(ZeroDivisionError), held.connection() as connection:
        assert _driver(connection) is kept
        raise ZeroDivisionError
    # Its connection is closed, and the other kept one went back to the pool with it (after
    # a database restart the pool replaces the connections older than the failure).
    assert _checked_out(sessions) == 0
    with held.connection() as connection:
        assert _read(connection) == 1
    held.close()


def test_a_connection_idle_too_long_goes_back_to_the_pool(sessions: sessionmaker[Session]) -> None:
    clock = _Clock()
    held = HeldReads(sessions, most=2, idle_seconds=10, monotonic=clock)
    with held.connection() as connection:
        _read(connection)
    clock.now += 9
    with held.connection() as connection:
        _read(connection)
        reused = connection
    assert _checked_out(sessions) == 1
    clock.now += 11
    with held.connection() as connection:
        # The unused one went back to the pool; this is a new checkout, not the kept wrapper.
        assert connection is not reused
        assert _checked_out(sessions) == 1
        _read(connection)
    held.close()


def test_at_most_most_connections_are_kept(sessions: sessionmaker[Session]) -> None:
    held = HeldReads(sessions, most=2)
    with held.connection() as a, held.connection() as b, held.connection() as c:
        for connection in (a, b, c):
            _read(connection)
        assert _checked_out(sessions) == 3
    assert _checked_out(sessions) == 2
    held.close()
    assert _checked_out(sessions) == 0


def _closed(driver: Any) -> bool:
    if isinstance(driver, sqlite3.Connection):
        try:
            driver.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False
    return bool(driver.closed)


def test_connections_of_a_disposed_engine_are_closed_not_kept(
    sessions: sessionmaker[Session],
) -> None:
    engine = opened(sessions).engine
    held = HeldReads(sessions, most=2)
    with held.connection() as in_use:
        with held.connection() as idle:
            _read(idle)
            idle_driver = _driver(idle)
        in_use_driver = _driver(in_use)
        engine.dispose()  # a new pool from here on
        _read(in_use)  # the read in progress finishes on its connection...
    # ...which is then closed, driver connection and all, not kept nor handed to the old pool.
    assert _closed(in_use_driver)
    with held.connection() as connection:
        # The next read closes the idle one of the old pool and takes the new pool's.
        assert _closed(idle_driver)
        assert _driver(connection) is not idle_driver
        assert _checked_out(sessions) == 1
        assert _read(connection) == 1
    held.close()
    assert _checked_out(sessions) == 0


def test_unused_connections_go_back_while_another_is_busy(sessions: sessionmaker[Session]) -> None:
    """Reads reuse the most recently kept connection: the others, unused for longer than the
    idle time, go back to the pool rather than stay checked out."""
    clock = _Clock()
    held = HeldReads(sessions, most=3, idle_seconds=10, monotonic=clock)
    with held.connection() as a, held.connection() as b, held.connection() as c:
        for connection in (a, b, c):
            _read(connection)
    assert _checked_out(sessions) == 3
    for _ in range(3):
        clock.now += 6
        with held.connection() as connection:
            _read(connection)
    assert _checked_out(sessions) == 1
    held.close()


def test_no_engine_event_is_listened_to(sessions: sessionmaker[Session]) -> None:
    """An engine with connection events runs its event machinery for every statement."""
    engine = opened(sessions).engine
    had_events = engine._has_events
    held = HeldReads(sessions, most=2)
    with held.connection() as connection:
        _read(connection)
    assert engine._has_events == had_events
    held.close()


def test_what_is_kept_is_closed_when_the_holder_goes(sessions: sessionmaker[Session]) -> None:
    held = HeldReads(sessions, most=2)
    with held.connection() as connection:
        _read(connection)
    assert _checked_out(sessions) == 1
    del held, connection
    import gc

    gc.collect()
    assert _checked_out(sessions) == 0


def test_closing_the_store_hands_kept_connections_back_then_closes_the_pool(
    sessions: sessionmaker[Session],
) -> None:
    """`Store.close`, what every process of certok runs last: nothing stays checked out, and
    the pool holds no open connection (a kept SQLite one would keep its log unfolded)."""
    held = HeldReads(sessions, most=2)
    with held.connection() as connection:
        _read(connection)
        kept = _driver(connection)
    assert _checked_out(sessions) == 1
    engine = opened(sessions).engine
    Store(engine=engine, sessions=opened(sessions), box=SecretBox(bytes(32))).close()
    assert _closed(kept)


def test_shutdown_releases_what_is_kept_and_keeps_no_more(
    sessions: sessionmaker[Session],
) -> None:
    """`release_kept_connections` (certok's shutdown, before disposing the engine) hands the
    kept connections back, and a read still running then does not keep its own: disposing
    closes every connection (on SQLite the last close folds the log into the file)."""
    held = HeldReads(sessions, most=2)
    with held.connection() as in_use:
        with held.connection() as idle:
            _read(idle)
        assert _checked_out(sessions) == 2
        opened(sessions).release_kept_connections()
        assert _checked_out(sessions) == 1
        _read(in_use)
    assert _checked_out(sessions) == 0
    with held.connection() as connection:
        _read(connection)
    assert _checked_out(sessions) == 0
