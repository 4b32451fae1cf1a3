"""Writing a certificate pair so that a crash never leaves half a PEM.

Each file is written to a temporary file in its own directory, given its mode and owner,
fsynced, and renamed over the old one; then the directory is fsynced. The mode and owner are
the existing file's (a key nginx reads as another group keeps that group); a new key is 0600
and a new certificate 0644, whatever the umask.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from typing import NamedTuple

NEW_KEY_MODE = 0o600
NEW_CERT_MODE = 0o644
BACKUPS_KEPT = 5


class Pair(NamedTuple):
    cert_pem: bytes
    key_pem: bytes


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def leaf_der(chain_pem: bytes) -> bytes | None:
    """The first certificate of a PEM chain, as DER (the bytes a TLS server sends)."""
    import ssl

    text = chain_pem.decode("ascii", "replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(text[begin : end + len("-----END CERTIFICATE-----")])
    except ValueError:
        return None


def fingerprint(chain_pem: bytes | None) -> str | None:
    """SHA-256 of the leaf certificate, or None when there is none."""
    der = leaf_der(chain_pem) if chain_pem else None
    return hashlib.sha256(der).hexdigest() if der else None


def write_atomically(path: str, data: bytes, new_mode: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        existing = os.stat(path)
        mode, owner = existing.st_mode & 0o7777, (existing.st_uid, existing.st_gid)
    except FileNotFoundError:
        mode, owner = new_mode, None
    temporary = os.path.join(directory, f".{os.path.basename(path)}.certok-{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, mode)
        if owner is not None and hasattr(os, "fchown") and os.geteuid() == 0:
            os.fchown(descriptor, owner[0], owner[1])
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
        os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        os.unlink(temporary)
        raise
    os.close(descriptor)
    os.replace(temporary, path)
    _fsync_directory(directory)


def write_pair(cert_path: str, key_path: str, pair: Pair) -> None:
    # The key first: a reader that sees the new certificate must find its key already there.
    write_atomically(key_path, pair.key_pem, NEW_KEY_MODE)
    write_atomically(cert_path, pair.cert_pem, NEW_CERT_MODE)


def back_up(backup_dir: str, cert_path: str, key_path: str) -> str | None:
    """Copy the pair on disk into `backup_dir/<stamp>/`; its path, or None if there is none."""
    cert, key = read(cert_path), read(key_path)
    if cert is None and key is None:
        return None
    target = os.path.join(backup_dir, time.strftime("%Y%m%d%H%M%S") + f"-{os.getpid()}")
    os.makedirs(target, mode=0o700, exist_ok=True)
    for source, name in ((cert_path, "cert.pem"), (key_path, "key.pem")):
        if os.path.exists(source):
            destination = os.path.join(target, name)
            shutil.copyfile(source, destination)
            os.chmod(destination, 0o600)
    _prune(backup_dir)
    return target


def restore(backup: str | None, cert_path: str, key_path: str) -> None:
    """Put a backed-up pair back (a pair that did not exist before is removed again)."""
    for path, name, mode in (
        (key_path, "key.pem", NEW_KEY_MODE),
        (cert_path, "cert.pem", NEW_CERT_MODE),
    ):
        saved = read(os.path.join(backup, name)) if backup else None
        if saved is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            write_atomically(path, saved, mode)


def _prune(backup_dir: str) -> None:
    stamps: list[str] = sorted(os.listdir(backup_dir))
    for old in stamps[:-BACKUPS_KEPT]:
        shutil.rmtree(os.path.join(backup_dir, old), ignore_errors=True)


def _fsync_directory(directory: str) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
