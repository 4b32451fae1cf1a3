"""Keys, CSRs, certificate facts and encryption at rest.

ECC means P-256 and RSA means 2048 bits (what the three supported CAs issue for by default).
Private keys are stored with AES-256-GCM under a key-encryption key that lives outside the
database; the associated data binds each ciphertext to its owner so a row's key cannot be
swapped into another row.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from certok.errors import ConfigurationError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ALGORITHMS = ("ECC", "RSA")
_KEY_VERSION = b"\x01"
_NONCE_BYTES = 12


def generate_private_key(algorithm: str) -> PrivateKey:
    """A fresh key: ECC → P-256, RSA → 2048 bits."""
    if algorithm == "ECC":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown algorithm {algorithm!r}")


def private_key_to_pem(key: PrivateKey) -> str:
    """PEM as customers expect it: `EC PRIVATE KEY` / `RSA PRIVATE KEY` (traditional OpenSSL)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def private_key_from_pem(pem: str | bytes) -> PrivateKey:
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("unsupported key type")
    return key


def make_csr(key: PrivateKey, domains: list[str]) -> str:
    """A CSR for `domains` (first one as CommonName: ZeroSSL wants one; 64-char limit)."""
    builder = x509.CertificateSigningRequestBuilder()
    common_name = domains[0]
    if len(common_name) <= 64:
        builder = builder.subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
    )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class CertificateFacts:
    subject: str
    not_before: dt.datetime
    not_after: dt.datetime
    names: list[str]


_PEM_END = "-----END CERTIFICATE-----"


def certificate_facts(fullchain_pem: str) -> CertificateFacts:
    """Facts about the leaf (first certificate) of a PEM chain."""
    leaf = _leaf(fullchain_pem)
    names = _dns_names(leaf)
    return CertificateFacts(
        subject=_subject_of(leaf, names),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        names=names,
    )


def certificate_subject(fullchain_pem: str) -> str:
    """The leaf's subject as apply shows it: its CommonName, else its first DNS name (CAs
    that leave the CommonName out). `certificate_facts(...).subject`, for less."""
    return _subject_of(_leaf(fullchain_pem))


def _subject_of(leaf: x509.Certificate, names: list[str] | None = None) -> str:
    """The CommonName, else the first of the DNS names (`names`, when already read)."""
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        return str(cns[0].value)
    names = _dns_names(leaf) if names is None else names
    return names[0] if names else ""


def _leaf(fullchain_pem: str) -> x509.Certificate:
    # Only the leaf is parsed: the rest of the chain says nothing about the subject, and an
    # apply poll that misses the answer cache comes through here.
    end = fullchain_pem.find(_PEM_END)
    leaf_pem = fullchain_pem if end < 0 else fullchain_pem[: end + len(_PEM_END)]
    return x509.load_pem_x509_certificate(leaf_pem.encode("ascii"))


def _dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in san.value.get_values_for_type(x509.DNSName)]


def order_key_owner(order_id: int) -> str:
    """Associated data for an order's encrypted private key (binds the ciphertext to the row).

    Here, below both: the orders package encrypts the key, the certificates package (and
    agents, console) decrypt it, and neither may import the other for it.
    """
    return f"order:{order_id}:key"


class SecretBox:
    """AES-256-GCM encryption at rest with a key-encryption key kept outside the database."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ConfigurationError("the secret key must be 32 bytes (base64 in the key file)")
        self._aead = AESGCM(key)
        self._key = key

    @classmethod
    def from_settings(cls, secret_key: str | None, key_file: Path) -> SecretBox:
        """Use the key given in settings, else the key file, creating it (0600) on first start."""
        if secret_key:
            return cls(_decode_key(secret_key))
        if key_file.exists():
            _refuse_loose_permissions(key_file)
            return cls(_decode_key(key_file.read_text().strip()))
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(32)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(key).decode("ascii") + "\n")
        return cls(key)

    def encrypt(self, plaintext: bytes, owner: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _KEY_VERSION + nonce + self._aead.encrypt(nonce, plaintext, self._aad(owner))

    def decrypt(self, blob: bytes, owner: str) -> bytes:
        if not blob or blob[:1] != _KEY_VERSION:
            raise ValueError("unknown ciphertext version")
        nonce = blob[1 : 1 + _NONCE_BYTES]
        return self._aead.decrypt(nonce, blob[1 + _NONCE_BYTES :], self._aad(owner))

    def derive(self, purpose: str) -> bytes:
        """A sub-key for `purpose` (e.g. keyed hashes of CNAME labels), never the KEK itself."""
        return hmac.new(self._key, b"certok-derive\x00" + purpose.encode(), "sha256").digest()

    @staticmethod
    def _aad(owner: str) -> bytes:
        return b"certok\x00" + _KEY_VERSION + b"\x00" + owner.encode("utf-8")


def _refuse_loose_permissions(key_file: Path) -> None:
    # As PostgreSQL does with its TLS key: a key others can read is a key others may have.
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"the secret key file {key_file} can be read by other users (mode {mode:04o}): "
            f"run chmod 600 {key_file}, and make sure no one else has copied it"
        )


def _decode_key(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ConfigurationError("the secret key is not valid base64") from exc
