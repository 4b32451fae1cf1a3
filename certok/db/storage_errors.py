"""Telling a full disk and read-only storage apart from a database that is away.

Both show up as database errors ("database or disk is full", "attempt to write a readonly
database", SQLite's catch-all "disk I/O error", PostgreSQL's `53100` and `25006`) or as
`OSError`s (ENOSPC, EROFS) while creating the data directory or the key file. Answering them
with "the database is unreachable or restarting" sends the operator looking in the wrong
place: `storage_failure` names the cause, and the API and the CLI say it in their words.
Where SQLite's error is ambiguous (an I/O error, a file it cannot open), the file system of
the data directory is asked (`statvfs`): mounted read-only, or out of space.
"""

from __future__ import annotations

import errno
import os
from enum import Enum
from pathlib import Path

# SQLite primary result codes (sqlite3.h), from an exception's `sqlite_errorcode`.
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
# PostgreSQL SQLSTATEs: disk_full, read_only_sql_transaction.
_PG_DISK_FULL = "53100"
_PG_READ_ONLY = "25006"
# Less free space than this (bytes) on the data directory's file system counts as full.
_NEARLY_FULL_BYTES = 64 * 1024


class StorageFailure(Enum):
    FULL = "full"
    READ_ONLY = "read-only"
    NOT_PERMITTED = "not permitted"


def storage_failure(error: BaseException, directory: Path | None) -> StorageFailure | None:
    """Whether `error` means certok cannot write its storage, and why (None: something else)."""
    cause: BaseException = getattr(error, "orig", None) or error
    if isinstance(cause, OSError) and not _is_dbapi(cause):
        return _from_errno(cause.errno)
    sqlite_code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        primary = sqlite_code & 0xFF
        if primary == _SQLITE_FULL:
            return StorageFailure.FULL
        if primary == _SQLITE_READONLY:
            return StorageFailure.READ_ONLY
        if primary in (_SQLITE_IOERR, _SQLITE_CANTOPEN):
            return _from_file_system(directory)
        return None
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate == _PG_DISK_FULL:
        return StorageFailure.FULL
    if sqlstate == _PG_READ_ONLY:
        return StorageFailure.READ_ONLY
    # An error that crossed a process boundary (the writer process) keeps its text only.
    text = str(cause).lower()
    if "database or disk is full" in text or "no space left on device" in text:
        return StorageFailure.FULL
    if "readonly database" in text or "read-only" in text:
        return StorageFailure.READ_ONLY
    if "disk i/o error" in text or "unable to open database file" in text:
        return _from_file_system(directory)
    return None


def _is_dbapi(error: BaseException) -> bool:
    # sqlite3's and psycopg's exceptions are not OSErrors, but be sure: they carry codes.
    return hasattr(error, "sqlite_errorcode") or hasattr(error, "sqlstate")


def _from_errno(number: int | None) -> StorageFailure | None:
    if number in (errno.ENOSPC, errno.EDQUOT):
        return StorageFailure.FULL
    if number == errno.EROFS:
        return StorageFailure.READ_ONLY
    if number in (errno.EACCES, errno.EPERM):
        return StorageFailure.NOT_PERMITTED
    return None


def _from_file_system(directory: Path | None) -> StorageFailure | None:
    if directory is None:
        return None
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    if info.f_flag & os.ST_RDONLY:
        return StorageFailure.READ_ONLY
    if info.f_bavail * info.f_frsize < _NEARLY_FULL_BYTES:
        return StorageFailure.FULL
    if not os.access(directory, os.W_OK):
        return StorageFailure.NOT_PERMITTED
    return None


def operator_message(failure: StorageFailure, directory: Path) -> str:
    """For the CLI and the log: what is wrong, where, and what to do."""
    if failure is StorageFailure.FULL:
        return (
            f"the disk holding certok's data ({directory}) is full: free space on it; "
            "certok writes again as soon as it can"
        )
    if failure is StorageFailure.READ_ONLY:
        return (
            f"certok's data ({directory}) is on read-only storage: remount it read-write "
            "(or point data_dir / database_url at writable storage)"
        )
    return (
        f"certok may not write in its data directory {directory}: give the user running "
        "certok write access to it (or point data_dir at a directory it owns)"
    )


def client_message(failure: StorageFailure) -> str:
    """For API clients: what is wrong, without the operator's paths."""
    if failure is StorageFailure.FULL:
        what = "its disk is full"
    elif failure is StorageFailure.READ_ONLY:
        what = "its storage is read-only"
    else:
        what = "it may not write its storage"
    return (
        f"certok cannot save anything: {what} (the operator must fix it; reading still works); "
        "retry the same request later"
    )
