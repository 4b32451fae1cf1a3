"""`certok.db` deleted while `certok serve` runs: said loudly at once, and no silent restart.

The running server notices within its file check (2 s) and logs it at CRITICAL; started
again, it refuses the empty database it would otherwise have created, in one line naming
`allow_empty_database`, until the operator restores the file or sets it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from tests.rig.errors import RigError


@pytest.mark.timeout(90)
def test_a_database_deleted_under_a_running_server_is_noticed_and_not_replaced(  # type: ignore[no-untyped-def]
    certok_server,
) -> None:
    server = certok_server()
    server.create_tenant("acme-corp")
    database = Path(server.env["CERTOK_DATA_DIR"]) / "certok.db"
    # The operator's backup (everything in the main file), then the mistake.
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup = database.with_name("backup.db")
    os.link(database, backup)
    database.unlink()
    deadline = time.monotonic() + 15
    while "was deleted while certok runs" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.1)
    assert "CRITICAL" in server.log_text()
    server.stop()
    for companion in ("certok.db-wal", "certok.db-shm"):
        database.with_name(companion).unlink(missing_ok=True)

    with pytest.raises(RigError):
        server.start()
    assert "allow_empty_database" in server.log_text().strip().splitlines()[-1]
    assert not database.exists()  # refused before creating anything

    # The file restored: certok starts on it, with its tenant.
    backup.rename(database)
    server.start()
    assert "acme-corp" in server.cli("tenant", "list")
