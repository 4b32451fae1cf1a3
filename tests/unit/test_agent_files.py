"""certok-agent's file handling: atomic writes keep mode and owner, backups restore exactly."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from certok_agent import files

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_key_0600_and_certificate_0644_whatever_the_umask(
    tmp_path: Path, strict_umask: None
) -> None:
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    files.write_pair(str(cert), str(key), files.Pair(b"chain", b"key"))
    assert (cert.read_bytes(), key.read_bytes()) == (b"chain", b"key")
    assert mode(cert) == 0o644 and mode(key) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_files_keep_their_mode(tmp_path: Path) -> None:
    key = tmp_path / "site.key"
    key.write_bytes(b"old")
    key.chmod(0o640)
    files.write_atomically(str(key), b"new", files.NEW_KEY_MODE)
    assert key.read_bytes() == b"new" and mode(key) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = tmp_path / "site.pem"
    cert.write_bytes(b"old")

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        files.write_atomically(str(cert), b"new", 0o644)
    assert cert.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.pem"]


def test_backup_and_restore_round_trip(tmp_path: Path) -> None:
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    cert.write_bytes(b"old chain")
    key.write_bytes(b"old key")
    backup = files.back_up(str(tmp_path / "backups"), str(cert), str(key))
    assert backup is not None and mode(Path(backup) / "key.pem") == 0o600
    files.write_pair(str(cert), str(key), files.Pair(b"new chain", b"new key"))
    files.restore(backup, str(cert), str(key))
    assert (cert.read_bytes(), key.read_bytes()) == (b"old chain", b"old key")


def test_restoring_nothing_removes_a_pair_that_did_not_exist(tmp_path: Path) -> None:
    cert, key = tmp_path / "site.pem", tmp_path / "site.key"
    assert files.back_up(str(tmp_path / "b"), str(cert), str(key)) is None
    files.write_pair(str(cert), str(key), files.Pair(b"c", b"k"))
    files.restore(None, str(cert), str(key))
    assert not cert.exists() and not key.exists()


def test_backups_are_pruned_to_the_newest(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    for i in range(files.BACKUPS_KEPT + 3):
        (backups / f"2026010100000{i:02d}").mkdir(parents=True)
    cert = tmp_path / "site.pem"
    cert.write_bytes(b"x")
    files.back_up(str(backups), str(cert), str(tmp_path / "site.key"))
    assert len(list(backups.iterdir())) == files.BACKUPS_KEPT


def test_fingerprint_reads_the_leaf_only() -> None:
    assert files.fingerprint(b"garbage") is None
    assert files.fingerprint(None) is None
    leaf = files.fingerprint(CERT)
    assert (
        leaf is not None
        and files.fingerprint(CERT + b"\n" + CERT.replace(b"MIIB", b"MIIC")) == leaf
    )
