"""The SQLite writer lock: one writer at a time, handed over without SQLite's busy sleeps."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


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
