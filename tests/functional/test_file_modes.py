"""certok's data directory and database files are its user's alone, whatever the umask.

The database holds verification codes, certificates and token hints: the directory is made
0700 and `certok.db` with its `-wal` and `-shm` files 0600, and an existing directory or file
that others may read is named in a warning at start.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certok.db.engine import transaction
from certok.persistence import open_store
from certok.settings import Settings
from certok.tenants import service as tenants


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    wanted: int = request.param
    previous = os.umask(wanted)
    try:
        yield wanted
    finally:
        os.umask(previous)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o002], indirect=True)
def test_a_new_data_directory_and_database_are_private_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    data = tmp_path / "srv" / "certok-data"
    store = open_store(Settings(data_dir=data))
    try:
        with transaction(store.sessions) as session:
            tenants.create_tenant(session, "acme")
            tenants.issue_token(session, "acme")
        # The write-ahead log and its index exist while a connection is open.
        with store.engine.connect() as connection:
            connection.exec_driver_sql("SELECT count(*) FROM tenants")
            assert mode(data) == 0o700
            assert mode(data / "certok.db") == 0o600
            for companion in ("certok.db-wal", "certok.db-shm"):
                assert (data / companion).exists(), companion
                assert mode(data / companion) == 0o600, companion
            assert mode(data / "secret.key") == 0o600
    finally:
        store.close()


def test_an_existing_directory_or_database_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    open_store(Settings(data_dir=data)).close()
    os.chmod(data, 0o755)
    os.chmod(data / "certok.db", 0o644)
    with caplog.at_level(logging.WARNING, logger="certok.db.files"):
        open_store(Settings(data_dir=data)).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"chmod 700 {data}" in w and "0755" in w for w in warnings), warnings
    assert any(f"chmod 600 {data / 'certok.db'}" in w and "0644" in w for w in warnings), warnings
    # Left as the operator set them: only named.
    assert mode(data) == 0o755


def test_private_modes_give_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    open_store(Settings(data_dir=data)).close()
    with caplog.at_level(logging.WARNING, logger="certok.db.files"):
        open_store(Settings(data_dir=data)).close()
    assert not [r for r in caplog.records if r.name == "certok.db.files"]
