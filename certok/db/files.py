"""certok's files on disk: who may read them, and whether the database is still the one opened.

- The data directory is made 0700 and a SQLite database file 0600 whatever the umask: they
  hold verification codes, certificates and token hints. SQLite creates its `-wal` and `-shm`
  files with the permissions of the database file, so creating that file 0600 before SQLite
  opens it covers all three. An existing directory or file that others may read is left as
  it is (the operator may have reasons) but named in a warning at start.
- A database file deleted or replaced while certok runs is noticed by `DatabaseFileWatch`
  (device and inode compared periodically): SQLite keeps writing to the file it opened, so
  without this every tenant, token and order would silently be lost at the next start.
- At start, an empty database next to a key file that already existed means the database
  was lost: certok refuses to start afresh unless told to (`allow_empty_database`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# SQLite's companion files, which it creates with the database file's permissions.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
# How often a running process checks that its database file is still the one it opened.
FILE_CHECK_SECONDS = 2.0
# The key the runtime reports the problem under (`certok.health`).
HEALTH_KEY = "database-file"
# While the problem lasts, it is logged again this often.
REMIND_SECONDS = 60.0


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (None: another database, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def prepare_data_dir(directory: Path) -> None:
    """Create the data directory 0700 (parents as the umask says); warn if it is wider."""
    if not directory.exists():
        directory.mkdir(parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; 0700 is wanted whatever it is.
        os.chmod(directory, DIRECTORY_MODE)
        return
    _warn_if_open(directory, DIRECTORY_MODE, "chmod 700")


def prepare_sqlite_file(database: Path) -> None:
    """Create the database file 0600 before SQLite does (its companions inherit the mode);
    warn about an existing file, or companion file, that others may read."""
    database.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        for path in (database, *(_companion(database, s) for s in SQLITE_COMPANIONS)):
            if path.exists():
                _warn_if_open(path, FILE_MODE, "chmod 600")
        return
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits off, never added: be exact
    finally:
        os.close(fd)


def _companion(database: Path, suffix: str) -> Path:
    return database.with_name(database.name + suffix)


def _warn_if_open(path: Path, wanted: int, fix: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "%s can be read by other users (mode %04o, certok creates it %04o): it holds "
            "verification codes, certificates and token hints; run %s %s",
            path,
            mode,
            wanted,
            fix,
            path,
        )


def database_is_empty(engine: Engine, database: Path | None) -> bool:
    """Whether the database holds no certok schema (a new or a lost database)."""
    if database is not None:
        try:
            if database.stat().st_size == 0:
                return True
        except FileNotFoundError:
            return True
    return not inspect(engine).has_table("alembic_version")


def empty_database_message(database: str, key_file: Path) -> str:
    return (
        f"the database {database} is empty, but the key file {key_file} shows this "
        "installation had data: restore the database from a backup, or set "
        "allow_empty_database = true (CERTOK_ALLOW_EMPTY_DATABASE=true) to start afresh"
    )


# --- the running process's watch --------------------------------------------------------------


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int


def _identity(path: Path) -> FileIdentity | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return FileIdentity(st.st_dev, st.st_ino)


class DatabaseFileWatch:
    """Compares the database file's device and inode with those seen when certok opened it."""

    def __init__(self, database: Path, on_change: Callable[[str | None], None]) -> None:
        """`on_change(problem)` hears each new problem, and None once the file is back (the
        runtime passes `certok.health.reporter`: the process is not ready meanwhile)."""
        self.database = database
        self._on_change = on_change
        self._opened = _identity(database)
        self._reported: str | None = None
        self._logged_at = 0.0

    def check(self) -> str | None:
        """The problem with the database file now (None: it is the one opened). Logs a new
        problem at CRITICAL once and passes it to `on_change`."""
        now = _identity(self.database)
        if self._opened is None:
            self._opened = now
            return None
        if now == self._opened:
            problem = None
        elif now is None:
            problem = (
                f"the database file {self.database} was deleted while certok runs: new data "
                "goes to a file no one can open again; stop certok and restore the file "
                "from a backup (or put it back) before starting again"
            )
        else:
            problem = (
                f"the database file {self.database} was replaced while certok runs (device "
                f"{now.device}, inode {now.inode}; opened as {self._opened.device}, "
                f"{self._opened.inode}): this process still uses the old file; restart "
                "certok to use the new one, or put the old one back"
            )
        if problem != self._reported:
            if problem is None:
                log.warning("the database file %s is back as opened", self.database)
            else:
                log.critical("%s", problem)
                self._logged_at = time.monotonic()
            self._reported = problem
            self._on_change(problem)
        elif problem is not None and time.monotonic() - self._logged_at >= REMIND_SECONDS:
            log.critical("still: %s", problem)  # a log read later must not miss it
            self._logged_at = time.monotonic()
        return problem


async def run_file_watch(watch: DatabaseFileWatch, interval: float = FILE_CHECK_SECONDS) -> None:
    """Check the database file every `interval` seconds (a stat: no database access)."""
    while True:
        try:
            watch.check()
        except OSError as error:  # a transient stat failure must not end the watch
            log.warning("could not check the database file %s: %s", watch.database, error)
        await asyncio.sleep(interval)
