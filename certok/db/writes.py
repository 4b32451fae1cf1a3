"""Group commit: the short write transactions of one process share SQLite's one writer.

SQLite lets one transaction write at a time, across every process on the database. Under
load a write transaction holds that right far longer than its SQL takes: the thread holding
it competes for the GIL with every other thread of its process between SQLite calls, and
the other writers queue behind it (bench/README.md, "Figures behind the code").

`write(sessions, job)` runs `job(connection)` in a write transaction and returns what it
returned. On a SQLite file, jobs go to one writer thread per process, which takes the writer
lock once, runs every job waiting by then in one transaction and commits once: the lock is
taken, and the GIL contended for, once per batch instead of once per job. A job that raises
rolls the batch back; each of its jobs then runs again in a transaction of its own, so the
one that raised raises to its caller alone and the others commit. Jobs therefore must be
plain database work: no side effects outside the connection, safe to run a second time.
Elsewhere (PostgreSQL, in-memory SQLite) `write` is an ordinary transaction in the caller's
thread: PostgreSQL locks rows, not the database, and batching would only add waiting.

Batching inside a busy process still leaves the batching thread competing for the GIL; a
multi-process node therefore runs it in a writer process of its own (`write_channel`).

Which of these writes a process's jobs is decided once, when the database is opened
(`certok.db.sessions.make_session_factory`), and carried by the session factory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from certok.db.engine import opened
from certok.db.writer_lock import SqliteWriterLock

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[Connection], T]

# Enough to empty the queue of a busy process in one go, small enough that a batch holds the
# writer lock for milliseconds, not for the other processes' whole share.
MAX_BATCH = 64


def write(sessions: sessionmaker[Session], job: Job[T]) -> T:
    """Run `job(connection)` in a committed write transaction; return its result.

    In the API + worker processes of a multi-process node the job goes to the writer process
    (`certok.db.write_channel`), and must pickle: a `functools.partial` of a module-level
    function with plain arguments.
    """
    return opened(sessions).writer.run(job)


def write_statement(sessions: sessionmaker[Session], job: Job[T]) -> T:
    """`write(sessions, job)` for a job that sends exactly one statement.

    On PostgreSQL the statement runs in autocommit: one statement is atomic on its own, and
    it costs one round trip instead of three (psycopg sends BEGIN, and COMMIT, as round trips
    of their own). Elsewhere it is `write`: SQLite's writes share batched transactions.
    A job that may send a second statement must use `write`: in autocommit the first one
    would stay committed if the second failed.
    """
    factory = opened(sessions)
    if factory.autocommit_engine is None:
        return factory.writer.run(job)
    with factory.autocommit_engine.connect() as connection:
        return job(connection)


class TransactionWriter:
    """Each job in a transaction of its own, in the caller's thread (PostgreSQL, in-memory
    SQLite)."""

    def __init__(self, engine: Engine, lock: SqliteWriterLock | None) -> None:
        self._engine = engine
        self._lock = lock

    def run(self, job: Job[T]) -> T:
        with self._lock or contextlib.nullcontext(), self._engine.begin() as connection:
            return job(connection)


class WriteBatcher:
    """One writer thread for one engine in one process (see the module docstring)."""

    def __init__(self, engine: Engine, lock: SqliteWriterLock) -> None:
        self._engine = engine
        self._lock = lock
        self._pending: list[tuple[Job[Any], Future[Any]]] = []
        self._wakeup = threading.Condition()
        self._pid = 0  # the thread starts with the first job

    def run(self, job: Job[T]) -> T:
        future: Future[T] = Future()
        with self._wakeup:
            # A forked child inherits the batcher but not its parent's writer thread.
            if self._pid != os.getpid():
                self._pending.clear()
                self._pid = os.getpid()
                name = "certok-db-writer"
                threading.Thread(target=self._run, name=name, daemon=True).start()
            self._pending.append((job, future))
            self._wakeup.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._pending:
                    self._wakeup.wait()
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            try:
                self._run_batch(batch)
            except Exception as error:  # the thread must outlive any batch
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)

    def _run_batch(self, batch: list[tuple[Job[Any], Future[Any]]]) -> None:
        outcomes = run_jobs(self._engine, self._lock, [job for job, _ in batch])
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


# (True, result) or (False, the exception it raised), once its transaction committed.
Outcome = tuple[bool, Any]


def run_jobs(engine: Engine, lock: SqliteWriterLock | None, jobs: list[Job[Any]]) -> list[Outcome]:
    """Run `jobs` in one write transaction under the SQLite writer lock; if one raises, the
    batch rolls back and each job runs again alone, so only the failing one fails."""
    with lock or contextlib.nullcontext(), engine.connect() as connection:
        try:
            with connection.begin():
                results = [job(connection) for job in jobs]
        except Exception as error:
            if len(jobs) == 1:
                return [(False, error)]
            # Which job failed, and whether the others would have: each on its own.
            log.debug("write batch of %d rolled back; running its jobs one by one", len(jobs))
            outcomes: list[Outcome] = []
            for job in jobs:
                try:
                    with connection.begin():
                        outcomes.append((True, job(connection)))
                except Exception as single_error:
                    outcomes.append((False, single_error))
            return outcomes
    # Results reach the callers only once the batch is committed.
    return [(True, result) for result in results]
