"""Read connections kept out of the pool between the batches of one hot read.

apply's read of polled codes (`certok.api.apply_reads`) runs a batch on one of a few threads
for every poll its cache of issued answers misses: with a million stored codes, almost every
poll. Checking a connection out of SQLAlchemy's pool and back in around each batch (its
locks, the reset on return, the connection's wrapper) cost about as much certok CPU as
SQLite's own read of the code. `HeldReads` keeps up to `most` connections checked out and
hands them from one batch to the next instead.

What the pool did around each checkout still holds for a kept connection:
- a connection idle for longer than `IDLE_PING_SECONDS` goes back to the pool and the read
  takes a fresh checkout, which pings it on PostgreSQL (a restarted server is found then,
  not by a poll's failure);
- a read that fails closes its connection rather than keeping one that may be broken;
- `Engine.dispose()` closes the kept connections that are idle, and one in use is closed
  when its read ends, so no read outlives the engine's connections;
- they are read connections (`read_connection`: autocommit on PostgreSQL), and a read leaves
  no transaction open on them.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import IDLE_PING_SECONDS, opened


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
        self._most = most
        self._idle_seconds = idle_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # The kept connections not in use, each with when it was last used; most recent last.
        self._kept: list[tuple[Connection, float]] = []
        # Bumped by the engine's dispose: a connection taken before it is not kept again.
        self._generation = 0
        engine = self._factory.engine
        disposed = _on_dispose(weakref.ref(self))
        event.listen(engine, "engine_disposed", disposed)
        # Whatever is still kept when this object goes is closed, not left to the collector.
        weakref.finalize(self, _forget, engine, disposed, self._kept, self._lock)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A read connection for this thread's read; kept for the next one if the read ends
        without an error."""
        connection, generation = self._take()
        try:
            yield connection
        except BaseException:
            connection.close()
            raise
        if connection.in_transaction():
            # A read through `execute` began one (on the driver: nothing, in autocommit or
            # for a SELECT on SQLite); the next read must not run inside it.
            connection.rollback()
        self._give_back(connection, generation)

    def close(self) -> None:
        """Close the kept connections that are not in use, and let none in use be kept."""
        with self._lock:
            self._generation += 1
            kept, self._kept[:] = list(self._kept), []
        for connection, _ in kept:
            _discard(connection)

    def _take(self) -> tuple[Connection, int]:
        now = self._monotonic()
        stale: list[Connection] = []
        with self._lock:
            generation = self._generation
            taken = None
            while self._kept:
                connection, used_at = self._kept.pop()
                if now - used_at > self._idle_seconds:
                    stale.append(connection)  # the older ones below it are staler still
                    continue
                taken = connection
                break
        for connection in stale:
            connection.close()  # back to the pool, which checks it before handing it out
        if taken is None:
            taken = self._factory.read_connection()
        return taken, generation

    def _give_back(self, connection: Connection, generation: int) -> None:
        with self._lock:
            current = generation == self._generation
            if current and len(self._kept) < self._most:
                self._kept.append((connection, self._monotonic()))
                return
        if current:
            connection.close()  # back to the pool
        else:
            _discard(connection)


def _discard(connection: Connection) -> None:
    """Close `connection`'s driver connection itself: its pool may be one a dispose replaced,
    which would leave a connection handed back to it open until the collector finds it."""
    connection.invalidate()
    connection.close()


def _on_dispose(holder: weakref.ref[HeldReads]) -> Callable[[Engine], None]:
    def disposed(_engine: Engine) -> None:
        held = holder()
        if held is not None:
            held.close()

    return disposed


def _forget(
    engine: Engine,
    disposed: Callable[[Engine], None],
    kept: list[tuple[Connection, float]],
    lock: threading.Lock,
) -> None:
    if event.contains(engine, "engine_disposed", disposed):
        event.remove(engine, "engine_disposed", disposed)
    with lock:
        connections, kept[:] = [connection for connection, _ in kept], []
    for connection in connections:
        connection.close()
