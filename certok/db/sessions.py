"""Opening a database's sessions: the one place that decides how this process writes.

`make_session_factory` is called once per opened database (by `certok.persistence.open_store`, or
a test). It makes the database's SQLite writer lock and its writer, and returns them with the
sessions in one `SessionFactory`:

- a SQLite file: a `WriteBatcher` (one writer thread, jobs batched: `certok.db.writes`);
- with `writer_socket` (an API + worker process of a multi-process node on SQLite): a
  `RemoteWriter` to the writer process (`certok.db.write_channel`), which falls back on the
  batcher while that process cannot be reached;
- otherwise (PostgreSQL, in-memory SQLite): a plain transaction in the caller's thread.

Why the session factory carries the writer: `write(sessions, job)` and `transaction(sessions)`
are called from a dozen packages, which already receive the session factory wherever they
touch the database. A `sessionmaker` subclass that also holds the writer lock and the writer
reaches every one of them unchanged, with no second object to thread through, and no
module-level registry keyed by engine deciding behind the caller's back what a write does.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from certok.db.engine import SessionFactory, Writer, is_sqlite_file, writer_lock_for
from certok.db.write_channel import RemoteWriter
from certok.db.writes import TransactionWriter, WriteBatcher


def make_session_factory(engine: Engine, *, writer_socket: Path | None = None) -> SessionFactory:
    """The sessions of `engine` and its writer; `writer_socket` is the writer process's."""
    lock = writer_lock_for(engine)
    writer: Writer
    if lock is not None and is_sqlite_file(engine):
        writer = WriteBatcher(engine, lock)
        if writer_socket is not None:
            writer = RemoteWriter(writer_socket, writer)
    else:
        writer = TransactionWriter(engine, lock)
    return SessionFactory(engine, lock, writer)
