"""The `certok` command as an operator runs it (a real subprocess on a real data dir)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def run(
    data_dir: Path, *args: str, ok: bool = True, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`python -m certok ARGS` with only CERTOK_DATA_DIR and `settings` (CERTOK_ names) set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    env["CERTOK_DATA_DIR"] = str(data_dir)
    env.update(settings)
    result = subprocess.run(
        [sys.executable, "-m", "certok", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def test_tenant_and_token_lifecycle(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert "up to date" in run(data, "db", "upgrade").stdout
    created = run(data, "tenant", "create", "Acme-Corp")
    token = created.stdout.split("token:")[1].split()[0]
    assert len(token) == 32 and int(token, 16) >= 0
    assert "cannot show it again" in created.stderr
    # only the digest is stored, never the token
    with sqlite3.connect(data / "certok.db") as db:
        dump = "\n".join(db.iterdump())
    assert token not in dump

    listing = run(data, "tenant", "list").stdout
    assert "acme-corp" in listing and "active" in listing

    second = run(data, "token", "create", "acme-corp").stdout.split("token:")[1].split()[0]
    assert second != token
    assert run(data, "tenant", "list").stdout.split("acme-corp")[1].split()[1] == "2"
    run(data, "token", "revoke", second[:6])
    assert run(data, "tenant", "list").stdout.split("acme-corp")[1].split()[1] == "1"

    run(data, "tenant", "disable", "acme-corp")
    assert "disabled" in run(data, "tenant", "list").stdout
    run(data, "tenant", "enable", "acme-corp")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tenant", "create", "bad name!"), "not valid"),
        (("tenant", "disable", "nobody"), "no tenant named"),
        (("token", "revoke", "abc"), "at least its first 6"),
        (("token", "revoke", "0" * 32), "no active token"),
        (("host", "release", "www.example.com"), "not bound"),
    ],
)
def test_operator_errors_are_clear(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run(tmp_path / "data", *args, ok=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_tenant_and_bad_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run(data, "tenant", "create", "acme")
    result = run(data, "tenant", "create", "acme", ok=False)
    assert result.returncode != 0 and "already exists" in result.stderr
    config = tmp_path / "certok.toml"
    config.write_text("dns_ttl = 999\n")
    result = run(data, "--config", str(config), "tenant", "list", ok=False)
    assert (
        result.returncode != 0 and "dns_ttl" in result.stderr and "Traceback" not in result.stderr
    )


def test_audit_lists_tenant_and_token_actions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = run(data, "tenant", "create", "acme").stdout.split("token:")[1].split()[0]
    run(data, "token", "create", "acme")
    run(data, "token", "revoke", token[:6])
    run(data, "tenant", "disable", "acme")
    run(data, "tenant", "create", "other")
    listing = run(data, "audit").stdout.splitlines()
    actions = [line.split()[2] for line in listing[1:]]
    assert actions == [
        "tenant.create",
        "token.create",
        "token.create",
        "token.revoke",
        "tenant.disable",
        "tenant.create",
        "token.create",
    ]
    assert all(" cli:" in line and "cli on " in line for line in listing[1:])
    assert f"token {token[:6]}…" in listing[4]
    # never a whole token
    assert token not in "\n".join(listing)
    only_acme = run(data, "audit", "--tenant", "acme", "--action", "token").stdout.splitlines()
    assert [line.split()[2] for line in only_acme[1:]] == [
        "token.create",
        "token.create",
        "token.revoke",
    ]


def test_backup_and_restore_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run(data, "tenant", "create", "before")
    backup = tmp_path / "certok-backup.db"
    made = run(data, "backup", str(backup))
    assert "backed up" in made.stdout and "secret key file is NOT in the backup" in made.stderr
    assert backup.stat().st_mode & 0o777 == 0o600
    assert run(data, "backup", str(backup), ok=False).returncode != 0  # no silent overwrite
    run(data, "tenant", "create", "after")
    restored = run(data, "restore", str(backup), "--force")
    assert "restored" in restored.stdout and "before-restore-" in restored.stderr
    listing = run(data, "tenant", "list").stdout
    assert "before" in listing and "after" not in listing
    not_a_backup = tmp_path / "junk.db"
    not_a_backup.write_text("hello")
    result = run(data, "restore", str(not_a_backup), "--force", ok=False)
    assert result.returncode != 0 and "not a SQLite database" in result.stderr


def test_restore_over_a_lost_database_ignores_its_leftover_log(tmp_path: Path) -> None:
    """The database file is gone but its write-ahead log is left (a server that was killed, a
    careless `rm certok.db`): the restore must not let SQLite replay that log onto the
    backup."""
    data = tmp_path / "data"
    run(data, "tenant", "create", "before")
    backup = tmp_path / "certok-backup.db"
    run(data, "backup", str(backup))
    database = data / "certok.db"
    writer = sqlite3.connect(database)
    writer.execute("PRAGMA wal_autocheckpoint=0")  # the new row stays in the log
    writer.execute(
        "INSERT INTO tenants (name, disabled, http_handle, created_at) "
        "SELECT 'only-in-the-log', disabled, 'only-in-the-log', created_at FROM tenants LIMIT 1"
    )
    writer.commit()
    log = Path(f"{database}-wal").read_bytes()
    writer.close()  # the last connection folds the log into the file and removes it
    database.unlink()
    Path(f"{database}-wal").write_bytes(log)  # what a killed server leaves beside it

    restored = run(data, "restore", str(backup), "--force")

    assert "left behind by the lost database" in restored.stderr
    listing = run(data, "tenant", "list").stdout
    assert "before" in listing and "only-in-the-log" not in listing


def test_backup_of_postgresql_prints_pg_dump_guidance(tmp_path: Path) -> None:
    url = "postgresql+psycopg://certok:s3cret@db.internal:5432/certok"
    result = run(
        tmp_path / "data", "backup", str(tmp_path / "b"), ok=False, CERTOK_DATABASE_URL=url
    )
    assert result.returncode == 2
    assert "pg_dump --format=custom" in result.stderr
    assert "postgresql://certok:***@db.internal:5432/certok" in result.stderr
    assert "s3cret" not in result.stderr and "secret key file" in result.stderr


def test_the_pg_dump_guidance_leaves_out_what_only_psycopg_takes(tmp_path: Path) -> None:
    """`prepare_threshold` is psycopg's (docs/settings.md); pg_dump refuses the URL with it."""
    url = "postgresql+psycopg://certok@db.internal/certok?prepare_threshold=none&sslmode=require"
    result = run(
        tmp_path / "data", "backup", str(tmp_path / "b"), ok=False, CERTOK_DATABASE_URL=url
    )
    assert "'postgresql://certok@db.internal/certok?sslmode=require'" in result.stderr
