"""Database engine and sessions; SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import URL, Connection, Engine, create_engine, event, exc, make_url
from sqlalchemy.orm import Session, sessionmaker

from certok.db.writer_lock import SqliteWriterLock
from certok.errors import ConfigurationError

# Threads that read stored codes for apply's polls, each one batch at a time
# (certok/api/apply_reads.py).
APPLY_READ_THREADS = 4
# Connections a process may hold at once besides its worker threads': the event loop's
# default executor's (asyncio.to_thread: min(32, CPUs + 4)), apply's reader threads' and, on
# PostgreSQL, as many more that an API process reads through from the event loop itself
# (certok/db/loop_reads.py), and a few loops' of their own (the claim loop, the order poller,
# the purger, the zone refresher). A pool opens its connections as they are needed: a
# process that serves no polls never opens the API's.
_OTHER_DATABASE_CONNECTIONS = min(32, (os.cpu_count() or 1) + 4) + 2 * APPLY_READ_THREADS + 4
# PostgreSQL connections opened past the pool's size for a burst, closed again when returned.
_POSTGRES_OVERFLOW = 10
# psycopg prepares a statement on a connection once it has run there this many times (its own
# default is 5). certok's statements are few and repeated, but spread over a pool of tens of
# connections: at 5, each statement was parsed and planned afresh its first five times on
# every connection, a quarter of the statements of a new process's first few hundred orders.
# At 1 a statement run once (a migration's, an operator's command) is still never prepared.
# `?prepare_threshold=N` in the database URL sets it; `none` turns preparing off (a pooler
# that hands each transaction to another server connection, as PgBouncer's transaction mode
# does, cannot keep them).
POSTGRES_PREPARE_THRESHOLD = 1


def database_threads(worker_threads: int) -> int:
    """How many database connections one certok process may use at the same time (its
    PostgreSQL pool's size)."""
    return worker_threads + _OTHER_DATABASE_CONNECTIONS


def make_engine(url: str, *, threads: int | None = None) -> Engine:
    """Create an engine tuned for certok's short transactions.

    ``threads`` (``database_threads``) sizes PostgreSQL's pool: a thread that finds the pool
    empty opens a new connection and closes it after its transaction, which under load cost
    a connection (a backend process on the server) plus a ping per transaction.
    """
    kwargs: dict[str, Any] = {"future": True}
    target: str | URL = url
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
        parsed = make_url(url)
        if parsed.get_driver_name() == "psycopg":
            kwargs["connect_args"] = {"prepare_threshold": prepare_threshold(parsed)}
            # psycopg would take the URL's text for a number and fail at the first statement.
            target = parsed.difference_update_query(["prepare_threshold"])
    engine = create_engine(target, **kwargs)
    if not url.startswith("sqlite"):
        event.listen(engine, "checkin", _note_checkin)
        event.listen(engine, "checkout", _ping_if_idle)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def prepare_threshold(url: URL) -> int | None:
    """psycopg's `prepare_threshold` for `url`: its `?prepare_threshold=` (a whole number, or
    `none`), else POSTGRES_PREPARE_THRESHOLD. Raises ConfigurationError naming what is
    accepted."""
    given = url.query.get("prepare_threshold")
    if given is None:
        return POSTGRES_PREPARE_THRESHOLD
    text = (given[-1] if isinstance(given, tuple) else given).strip().lower()
    if text == "none":
        return None
    if not (text.isascii() and text.isdigit()):
        raise ConfigurationError(
            f"database_url: prepare_threshold={text!r} is not a whole number >= 0 or 'none' "
            "(none turns prepared statements off, as PgBouncer's transaction mode needs)"
        )
    return int(text)


def is_sqlite(engine: Engine) -> bool:
    return engine.url.get_backend_name() == "sqlite"


def is_sqlite_file(engine: Engine) -> bool:
    """Whether `engine` is a SQLite database in a file: one writer at a time across processes,
    so its writes are batched (`certok.db.writes`) and may go to a writer process. A `file:`
    URI (a test's read-only view, say) is not: like `certok.db.files.sqlite_file`, certok
    takes no lock beside it."""
    database = engine.url.database or ""
    in_file = database not in ("", ":memory:") and not database.startswith("file:")
    return is_sqlite(engine) and in_file


def writer_lock_for(engine: Engine) -> SqliteWriterLock | None:
    """A writer lock for a SQLite database (None for others): made once per opened database,
    by `certok.db.sessions.make_session_factory`, and shared by all its writers."""
    if not is_sqlite(engine):
        return None
    database = engine.url.database
    return SqliteWriterLock(Path(database) if database and is_sqlite_file(engine) else None)


# A pooled PostgreSQL connection idle for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 10.0
_RETURNED_AT = "certok_returned_at"


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info[_RETURNED_AT] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat in the pool a while (SQLAlchemy's custom pessimistic check).

    Not ``pool_pre_ping``: a ping on every checkout was a round trip per transaction, costing
    certok CPU under load. Connections in steady use are not pinged; one that idled may have
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


# PostgreSQL sessions outside `transaction()` only read; see `SessionFactory`.
_AUTOCOMMIT = "AUTOCOMMIT"
# What `transaction()` runs in on PostgreSQL: the server's default, which certok's row locks
# and compare-and-set updates are written for.
_WRITE_ISOLATION = "READ COMMITTED"


T = TypeVar("T")


class Writer(Protocol):
    """Runs a write job (`certok.db.writes`) in a committed transaction; returns its result."""

    def run(self, job: Callable[[Connection], T]) -> T: ...


class ConnectionKeeper(Protocol):
    """Something that keeps connections checked out of the pool (certok.db.held_reads)."""

    def close(self) -> None:
        """Hand every kept connection back and keep none from now on."""


class SessionFactory(sessionmaker[Session]):
    """The sessions of one opened database, and how this process writes to it.

    Made once when the database is opened (`certok.db.sessions.make_session_factory`), and
    passed wherever sessions are: `transaction()` takes its writer lock, `write()` hands jobs
    to its writer. Nothing is looked up by engine in a registry of the module.
    """

    def __init__(self, engine: Engine, writer_lock: SqliteWriterLock | None, writer: Writer):
        # On PostgreSQL, sessions outside `transaction()` read in autocommit: psycopg sends
        # BEGIN as a round trip of its own before a transaction's first statement, and a
        # read-only session ends with a ROLLBACK, three round trips for one SELECT. Every write
        # goes through `transaction()` or the writer (on `engine` itself), which opt back into
        # a transaction; a plain session's reads each see committed data, as under READ
        # COMMITTED. A read that streams rows through a server-side cursor (`yield_per`,
        # `stream_results`) needs a transaction on PostgreSQL: run it in `transaction()`.
        self.reads_autocommit = engine.dialect.name == "postgresql"
        bind = (
            engine.execution_options(isolation_level=_AUTOCOMMIT)
            if self.reads_autocommit
            else engine
        )
        super().__init__(bind, expire_on_commit=False)
        self.engine = engine
        self._read_bind = bind
        # Where a write of one statement runs as its own transaction (`write_statement`).
        self.autocommit_engine = bind if self.reads_autocommit else None
        self.writer_lock = writer_lock
        self.writer = writer
        self._keepers: weakref.WeakSet[ConnectionKeeper] = weakref.WeakSet()

    def read_connection(self) -> Connection:
        """A connection for a few reads, without a session around it (as a session's reads:
        autocommit on PostgreSQL). Close it when done, e.g. `with factory.read_connection()`."""
        return self._read_bind.connect()

    def keep_track(self, keeper: ConnectionKeeper) -> None:
        """Have `release_kept_connections` close `keeper` (held weakly)."""
        self._keepers.add(keeper)

    def release_kept_connections(self) -> None:
        """Before the engine is disposed at shutdown: connections kept out of the pool go
        back, so disposing closes every connection (on SQLite the last one to close folds the
        write-ahead log into the database file and removes it)."""
        for keeper in list(self._keepers):
            keeper.close()


def opened(factory: sessionmaker[Session]) -> SessionFactory:
    """`factory` as certok opened it (a plain sessionmaker knows no writer lock or writer)."""
    if not isinstance(factory, SessionFactory):
        raise TypeError("expected a session factory from certok.db.sessions.make_session_factory")
    return factory


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception.

    On SQLite the whole transaction holds the database's writer lock: keep network calls out
    of it.
    """
    opened_factory = opened(factory)
    with opened_factory.writer_lock or nullcontext(), factory() as session, session.begin():
        if opened_factory.reads_autocommit:
            # A read session's autocommit would make each statement its own transaction.
            session.connection(execution_options={"isolation_level": _WRITE_ISOLATION})
        yield session
