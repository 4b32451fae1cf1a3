"""Database engine and sessions; SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker

# Threads of a process that may hold a database connection at once besides the worker's: the
# event loop's default executor (asyncio.to_thread: min(32, CPUs + 4)) and a few loops of
# their own (the claim loop, the order poller, the purger, the zone refresher).
_OTHER_DATABASE_THREADS = min(32, (os.cpu_count() or 1) + 4) + 4
# PostgreSQL connections opened past the pool's size for a burst, closed again when returned.
_POSTGRES_OVERFLOW = 10


def database_threads(worker_threads: int) -> int:
    """How many threads of one certok process may use the database at the same time."""
    return worker_threads + _OTHER_DATABASE_THREADS


def make_engine(url: str, *, threads: int | None = None) -> Engine:
    """Create an engine tuned for certok's short transactions.

    ``threads`` (``database_threads``) sizes PostgreSQL's pool: a thread that finds the pool
    empty opens a new connection and closes it after its transaction, which under load cost
    a connection (a backend process on the server) plus a ping per transaction.
    """
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # API threads, the worker pool and the DNS refresher share the file; keep enough
        # connections open that threads do not queue for one or reopen it (four PRAGMAs).
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        kwargs["pool_size"] = 32
        kwargs["max_overflow"] = 32
    else:
        kwargs["pool_size"] = threads or database_threads(8)
        kwargs["max_overflow"] = _POSTGRES_OVERFLOW
    engine = create_engine(url, **kwargs)
    if not url.startswith("sqlite"):
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", _ping_if_idle)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
        database = url.split("///", 1)[-1]
        on_disk = bool(database) and database != ":memory:"
        _SQLITE_WRITERS[engine] = SqliteWriterLock(Path(database) if on_disk else None)
    return engine


class SqliteWriterLock:
    """Queues the writers of one SQLite database, across threads and processes.

    SQLite lets one transaction write at a time. Writers that collide wait in SQLite's busy
    handler, which sleeps in steps of up to 100 ms: under dozens of writing threads (or the
    worker processes of `processes` ≥ 2) those sleeps, not the writes, set the pace. This lock
    (a thread lock, then `flock` on `<database>-writer.lock`) hands the database to the next
    writer the moment the previous one commits. Processes that do not take it (an older
    certok, the sqlite3 shell) still meet the busy timeout, so it is never needed for safety.
    """

    def __init__(self, database: Path | None) -> None:
        self._threads = threading.RLock()
        self._path = database.with_name(database.name + "-writer.lock") if database else None
        self._fd: int | None = None
        self._pid = 0
        self._depth = 0

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            self._depth += 1
            if self._depth == 1 and self._path is not None:
                fcntl.flock(self._file(), fcntl.LOCK_EX)
        except BaseException:
            self._depth -= 1
            self._threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _file(self) -> int:
        # A forked child must not share its parent's open file: flock locks are per open file.
        if self._fd is None or self._pid != os.getpid():
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd


_SQLITE_WRITERS: weakref.WeakKeyDictionary[Engine, SqliteWriterLock] = weakref.WeakKeyDictionary()


def sqlite_writer_lock(engine: Engine) -> SqliteWriterLock | None:
    """The writer lock of a SQLite engine (None for other databases)."""
    return _SQLITE_WRITERS.get(engine)


def is_sqlite_file(engine: Engine) -> bool:
    """Whether `engine` is a SQLite database in a file: one writer at a time across processes,
    so its writes are batched (`certok.db.writes`) and may go to a writer process."""
    in_file = engine.url.database not in (None, "", ":memory:")
    return in_file and sqlite_writer_lock(engine) is not None


# A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 10.0
_RETURNED_AT = "certok_returned_at"


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat in the pool a while (SQLAlchemy's custom pessimistic check).

    Not ``pool_pre_ping``: a ping on every checkout was a round trip per transaction and 5% of
    certok's CPU under load. Connections in steady use are not pinged; one that idled may have
    been cut by the server's restart, a failover or a firewall's idle timeout, and is replaced
    (DisconnectionError makes the pool connect afresh). A restart that hits connections in use
    fails only their transactions: SQLAlchemy then invalidates every older pooled connection.
    """
    returned = record.info.get(_RETURNED_AT)
    if returned is None or time.monotonic() - returned < IDLE_PING_SECONDS:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        dbapi_connection.rollback()  # end the transaction the ping began
    except Exception as error:
        raise exc.DisconnectionError(f"idle connection failed its ping: {error}") from error


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the DNS refresher and API read while the worker writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# PostgreSQL sessions outside `transaction()` only read; see `make_session_factory`.
_AUTOCOMMIT = "AUTOCOMMIT"
# What `transaction()` runs in on PostgreSQL: the server's default, which certok's row locks
# and compare-and-set updates are written for.
_WRITE_ISOLATION = "READ COMMITTED"


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine`; on PostgreSQL, reads outside `transaction()` run in autocommit.

    psycopg sends BEGIN as a round trip of its own before a transaction's first statement,
    and a read-only session ends with a ROLLBACK: three round trips (and three statements for
    the server) for one SELECT. Every write goes through `transaction()`, which opts back into
    a transaction; a plain session's reads each see committed data, as they did under READ
    COMMITTED. A read that streams rows through a server-side cursor (`yield_per`,
    `stream_results`) needs a transaction on PostgreSQL: run it in `transaction()`.
    """
    if engine.dialect.name == "postgresql":
        engine = engine.execution_options(isolation_level=_AUTOCOMMIT)
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception.

    On SQLite the whole transaction holds the engine's writer lock (see `_SQLITE_WRITERS`):
    keep network calls out of it.
    """
    bind = factory.kw.get("bind")
    writer: AbstractContextManager[None] | None = (
        _SQLITE_WRITERS.get(bind) if isinstance(bind, Engine) else None
    )
    with writer or nullcontext(), factory() as session, session.begin():
        if (
            isinstance(bind, Engine)
            and bind.get_execution_options().get("isolation_level") == _AUTOCOMMIT
        ):
            # A read session's autocommit would make each statement its own transaction.
            session.connection(execution_options={"isolation_level": _WRITE_ISOLATION})
        yield session
