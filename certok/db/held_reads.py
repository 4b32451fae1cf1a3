"""Read connections kept out of the pool between the batches of one hot read.

apply's read of polled codes (`certok.api.apply_reads`) runs a batch on one of a few threads
for every poll its cache of issued answers misses: with a million stored codes, almost every
poll. Checking a connection out of SQLAlchemy's pool and back in around each batch (its
locks, the reset on return, the connection's wrapper) cost about as much certok CPU as
SQLite's own read of the code. `HeldReads` keeps up to `most` connections checked out and
hands them from one batch to the next instead.

What the pool did around each checkout still holds for a kept connection:
- a kept connection unused for longer than `IDLE_PING_SECONDS` goes back to the pool before
  the next read, which takes a fresh checkout (pinged on PostgreSQL);
- a read that fails closes its connection and hands the other kept ones back to the pool, so
  after a database restart the pool's own check replaces them at their next checkout;
- after `Engine.dispose()` (a new pool) a connection of the old pool is closed, driver
  connection included, instead of being kept or handed back to the old pool;
- they are read connections (`read_connection`: autocommit on PostgreSQL), and a read leaves
  no transaction open on them.
No engine event is listened to: a connection event on the engine would make every statement
on it run the event machinery.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import Pool

from certok.db.engine import IDLE_PING_SECONDS, opened

# A kept connection: the connection, the pool it came from, when it was last used.
_Kept = tuple[Connection, Pool, float]


class HeldReads:
    """Up to `most` read connections of `sessions`' database, kept between reads."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        most: int,
        idle_seconds: float = IDLE_PING_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if most < 1:
            raise ValueError("most must be at least 1")
        self._factory = opened(sessions)
        self._engine = self._factory.engine
        self._most = most
        self._idle_seconds = idle_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # The kept connections not in use, least recently used first.
        self._kept: list[_Kept] = []
        self._closed = False  # closed at shutdown: keeps nothing more
        self._factory.keep_track(self)
        # Whatever is still kept when this object goes is closed, not left to the collector.
        weakref.finalize(self, _close_all, self._engine, self._kept, self._lock)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A read connection for this thread's read; kept for the next one if the read ends
        without an error."""
        connection, pool = self._take()
        try:
            yield connection
            if connection.in_transaction():
                # A read through `execute` began one (on the driver: nothing, in autocommit or
                # for a SELECT on SQLite); the next read must not run inside it.
                connection.rollback()
        except BaseException:
            _release(self._engine, connection, pool)
            # The database may have restarted: the kept ones go back to the pool, whose check
            # at checkout replaces those older than the failure.
            _close_all(self._engine, self._kept, self._lock)
            raise
        self._give_back(connection, pool)

    def close(self) -> None:
        """Hand the kept connections back to the pool and keep none from now on (a read in
        progress hands its connection back when it ends)."""
        with self._lock:
            self._closed = True
        _close_all(self._engine, self._kept, self._lock)

    def _take(self) -> tuple[Connection, Pool]:
        now = self._monotonic()
        current = self._engine.pool
        released: list[_Kept] = []
        taken: _Kept | None = None
        with self._lock:
            # Least recently used first: the unused ones go back even when the most recent
            # one is in use all the time.
            while self._kept and (
                now - self._kept[0][2] > self._idle_seconds or self._kept[0][1] is not current
            ):
                released.append(self._kept.pop(0))
            if self._kept:
                taken = self._kept.pop()
        for connection, pool, _ in released:
            _release(self._engine, connection, pool)
        if taken is not None:
            return taken[0], taken[1]
        return self._factory.read_connection(), current

    def _give_back(self, connection: Connection, pool: Pool) -> None:
        with self._lock:
            if not self._closed and pool is self._engine.pool and len(self._kept) < self._most:
                self._kept.append((connection, pool, self._monotonic()))
                return
        _release(self._engine, connection, pool)


def _release(engine: Engine, connection: Connection, pool: Pool) -> None:
    """Back to its pool; if a dispose replaced that pool, close the driver connection itself
    (handed back to the old pool, it would stay open until the collector found it)."""
    if pool is not engine.pool:
        connection.invalidate()
    connection.close()


def _close_all(engine: Engine, kept: list[_Kept], lock: threading.Lock) -> None:
    with lock:
        released, kept[:] = list(kept), []
    for connection, pool, _ in released:
        _release(engine, connection, pool)
