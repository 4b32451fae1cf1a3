"""SecretBox: encryption at rest of private keys, and the key file it keeps (certok/crypto.py)."""

from __future__ import annotations

import base64
import os
import secrets
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from certok.crypto import SecretBox
from certok.errors import ConfigurationError

OWNER = "order:7:key"
PLAINTEXT = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(secrets.token_bytes(32))


def test_a_round_trip_gives_the_plaintext_back(box: SecretBox) -> None:
    blob = box.encrypt(PLAINTEXT, OWNER)
    assert PLAINTEXT not in blob
    assert box.decrypt(blob, OWNER) == PLAINTEXT


def test_every_encryption_has_a_fresh_nonce(box: SecretBox) -> None:
    first, second = box.encrypt(PLAINTEXT, OWNER), box.encrypt(PLAINTEXT, OWNER)
    assert first != second
    assert first[1:13] != second[1:13]  # the 12-byte nonce after the version byte


def test_a_ciphertext_is_bound_to_its_owner(box: SecretBox) -> None:
    blob = box.encrypt(PLAINTEXT, OWNER)
    with pytest.raises(InvalidTag):
        box.decrypt(blob, "order:8:key")


@pytest.mark.parametrize("position", [1, 13, -1], ids=["nonce", "ciphertext", "tag"])
def test_any_changed_byte_is_refused(box: SecretBox, position: int) -> None:
    blob = bytearray(box.encrypt(PLAINTEXT, OWNER))
    blob[position] ^= 0x01
    with pytest.raises(InvalidTag):
        box.decrypt(bytes(blob), OWNER)


@pytest.mark.parametrize("blob", [b"", b"\x02" + bytes(40)], ids=["empty", "version 2"])
def test_an_unknown_version_is_refused(box: SecretBox, blob: bytes) -> None:
    with pytest.raises(ValueError, match="unknown ciphertext version"):
        box.decrypt(blob, OWNER)


def test_another_key_cannot_decrypt(box: SecretBox) -> None:
    with pytest.raises(InvalidTag):
        SecretBox(secrets.token_bytes(32)).decrypt(box.encrypt(PLAINTEXT, OWNER), OWNER)


def test_derived_keys_differ_by_purpose_and_are_not_the_key() -> None:
    key = secrets.token_bytes(32)
    box = SecretBox(key)
    labels, other = box.derive("delegation-label"), box.derive("something-else")
    assert len(labels) == 32
    assert labels != other
    assert key not in (labels, other)
    assert SecretBox(key).derive("delegation-label") == labels  # stable across restarts


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_a_key_of_the_wrong_size_is_a_configuration_error(size: int) -> None:
    with pytest.raises(ConfigurationError, match="32 bytes"):
        SecretBox(secrets.token_bytes(size))


# --- the key file -------------------------------------------------------------------------------


def test_the_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    key_file = tmp_path / "data" / "secret.key"
    box = SecretBox.from_settings(None, key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text().strip(), validate=True)) == 32
    blob = box.encrypt(PLAINTEXT, OWNER)
    # The next start reads the same key from the file.
    assert SecretBox.from_settings(None, key_file).decrypt(blob, OWNER) == PLAINTEXT


def test_a_key_in_settings_wins_over_the_file(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    key_file = tmp_path / "secret.key"
    box = SecretBox.from_settings(base64.b64encode(key).decode(), key_file)
    assert not key_file.exists()
    assert SecretBox(key).decrypt(box.encrypt(PLAINTEXT, OWNER), OWNER) == PLAINTEXT


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    key_file = tmp_path / "secret.key"
    SecretBox.from_settings(None, key_file)
    os.chmod(key_file, mode)
    with pytest.raises(ConfigurationError) as refused:
        SecretBox.from_settings(None, key_file)
    assert f"chmod 600 {key_file}" in refused.value.message
    assert f"{mode:04o}" in refused.value.message


def test_a_key_file_that_is_not_base64_is_a_configuration_error(tmp_path: Path) -> None:
    key_file = tmp_path / "secret.key"
    key_file.write_text("not base64 at all!\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigurationError, match="not valid base64"):
        SecretBox.from_settings(None, key_file)
