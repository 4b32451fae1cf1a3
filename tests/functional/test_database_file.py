"""A lost database is never silently replaced by an empty one.

At start: an empty database next to a key file that already existed (this installation had
data) is refused, with one line naming `allow_empty_database`. While running: a database file
deleted or replaced under certok is noticed by its device and inode, logged at CRITICAL and
reported to `certok.health` (the process is not ready).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from certok import health
from certok.db.engine import transaction
from certok.db.files import HEALTH_KEY, DatabaseFileWatch
from certok.errors import ConfigurationError
from certok.persistence import open_store
from certok.settings import Settings
from certok.tenants import service as tenants


def certok_cli(data: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    env.update(CERTOK_DATA_DIR=str(data), **settings)
    return subprocess.run(
        [sys.executable, "-m", "certok", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _installation_with_a_tenant(data: Path) -> None:
    store = open_store(Settings(data_dir=data))
    with transaction(store.sessions) as session:
        tenants.create_tenant(session, "acme")
    store.engine.dispose()


def _delete_database(data: Path) -> None:
    for name in ("certok.db", "certok.db-wal", "certok.db-shm"):
        (data / name).unlink(missing_ok=True)


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_an_empty_database_is_refused_when_the_key_file_shows_there_was_data(
    tmp_path: Path, how: str
) -> None:
    data = tmp_path / "data"
    _installation_with_a_tenant(data)
    _delete_database(data)
    if how == "emptied":
        (data / "certok.db").write_bytes(b"")
    with pytest.raises(ConfigurationError) as refused:
        open_store(Settings(data_dir=data))
    message = refused.value.message
    assert "allow_empty_database" in message and "CERTOK_ALLOW_EMPTY_DATABASE" in message
    assert str(data / "secret.key") in message and "\n" not in message
    # Nothing was created in its place.
    assert not (data / "certok.db").exists() or (data / "certok.db").stat().st_size == 0


def test_allow_empty_database_starts_afresh_on_purpose(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _installation_with_a_tenant(data)
    _delete_database(data)
    store = open_store(Settings(data_dir=data, allow_empty_database=True))
    with store.sessions() as session:
        assert tenants.list_tenants(session) == []
    store.engine.dispose()
    # From then on it is an installation like any other: no setting needed.
    open_store(Settings(data_dir=data)).engine.dispose()


def test_a_first_start_needs_no_setting(tmp_path: Path) -> None:
    open_store(Settings(data_dir=tmp_path / "new")).engine.dispose()


def test_the_cli_refuses_in_one_line_naming_the_setting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert certok_cli(data, "tenant", "create", "acme").returncode == 0
    _delete_database(data)
    for args in (("tenant", "list"), ("serve", "--api-port", "9", "--dns-port", "9")):
        result = certok_cli(data, *args)
        # Refused like every other setting-level problem: one line, exit status 2.
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "allow_empty_database" in lines[0] and lines[0].startswith("certok: error: ")
    listing = certok_cli(data, "tenant", "list", CERTOK_ALLOW_EMPTY_DATABASE="true")
    assert listing.returncode == 0, listing.stderr


@pytest.fixture
def watch_health() -> object:
    yield
    health.clear(HEALTH_KEY)


@pytest.mark.usefixtures("watch_health")
def test_a_replaced_database_file_is_logged_and_makes_the_process_not_ready(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    _installation_with_a_tenant(data)
    database = data / "certok.db"
    watch = DatabaseFileWatch(database, on_change=health.reporter(HEALTH_KEY))
    assert watch.check() is None and health.is_ready()

    # Replaced, as `cp backup.db certok.db.new && mv certok.db.new certok.db` would.
    shutil.copy(database, data / "other.db")
    os.link(database, data / "kept.db")
    with caplog.at_level(logging.CRITICAL, logger="certok.db.files"):
        os.replace(data / "other.db", database)
        problem = watch.check()
        assert problem is not None and "replaced" in problem and "restart" in problem
        assert not health.is_ready()
        assert health.problems()[HEALTH_KEY] == problem
        assert watch.check() == problem  # still wrong: no second CRITICAL line
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and str(database) in critical[0].getMessage()

    # Deleted.
    database.unlink()
    deleted = watch.check()
    assert deleted is not None and "deleted" in deleted
    assert "deleted" in health.problems()[HEALTH_KEY]

    # The opened file put back (same device and inode): ready again.
    os.link(data / "kept.db", database)
    assert watch.check() is None
    assert health.is_ready()
