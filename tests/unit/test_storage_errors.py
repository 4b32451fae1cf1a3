"""Telling a full disk and read-only storage apart from other database errors."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from certok.db.storage_errors import StorageFailure, storage_failure


def test_storage_failures_are_told_apart_from_other_errors(tmp_path: Path) -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    read_only = sqlite3.OperationalError("attempt to write a readonly database")
    read_only.sqlite_errorcode = 8  # type: ignore[attr-defined]
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert storage_failure(full, tmp_path) is StorageFailure.FULL
    assert storage_failure(read_only, tmp_path) is StorageFailure.READ_ONLY
    assert storage_failure(locked, tmp_path) is None
    # Text only (an error that came back from the writer process).
    assert storage_failure(Exception("database or disk is full"), None) is StorageFailure.FULL
    assert storage_failure(OSError(errno.ENOSPC, "No space"), None) is StorageFailure.FULL
    assert storage_failure(OSError(errno.EROFS, "Read-only"), None) is StorageFailure.READ_ONLY
    assert storage_failure(OSError(errno.ECONNREFUSED, "refused"), None) is None
    # An I/O error on a healthy, writable file system is not called a storage failure.
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = 10  # type: ignore[attr-defined]
    assert storage_failure(io_error, tmp_path) is None
