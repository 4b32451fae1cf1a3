"""`certok tenant profile NAME [PROFILE]`: the profile a tenant's orders use by default."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.functional.test_cli import run


def test_set_and_clear_a_tenants_default_profile(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run(data, "tenant", "create", "acme")
    assert "tlsserver" in run(data, "tenant", "profile", "acme", "tlsserver").stdout

    def stored() -> object:
        with sqlite3.connect(data / "certok.db") as db:
            return db.execute("SELECT default_profile FROM tenants").fetchone()[0]

    assert stored() == "tlsserver"
    run(data, "tenant", "profile", "acme")
    assert stored() is None
    missing = run(data, "tenant", "profile", "nobody", "classic", ok=False)
    assert missing.returncode != 0 and "no tenant named" in missing.stderr
    assert "Traceback" not in missing.stderr
