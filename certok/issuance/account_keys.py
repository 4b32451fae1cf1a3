"""ACME account keys: ECDSA P-256 (ES256) by default, stored as PKCS#8 PEM.

The PEM is unencrypted; callers encrypt it at rest (certok.crypto.SecretBox).
"""

from __future__ import annotations

import josepy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_EC_ALGORITHMS: dict[str, josepy.JWASignature] = {
    "secp256r1": josepy.ES256,
    "secp384r1": josepy.ES384,
    "secp521r1": josepy.ES512,
}


def new_account_key() -> josepy.JWK:
    """A fresh ECDSA P-256 account key (JWS alg ES256: small, fast, accepted by every CA)."""
    return josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


def account_key_to_pem(key: josepy.JWK) -> bytes:
    """The private key as unencrypted PKCS#8 PEM."""
    # josepy wraps the cryptography key (ComparableKey); only private keys can serialize.
    if not isinstance(key, josepy.JWKEC | josepy.JWKRSA) or not hasattr(key.key, "private_bytes"):
        raise ValueError("an account key must be a private EC or RSA key")
    pem: bytes = key.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem


def account_key_from_pem(pem: bytes | str) -> josepy.JWK:
    """Load an account key written by :func:`account_key_to_pem` (any PEM private key form)."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    private_key = serialization.load_pem_private_key(data, password=None)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if private_key.curve.name not in _EC_ALGORITHMS:
            raise ValueError(f"unsupported account key curve {private_key.curve.name}")
        return josepy.JWKEC(key=private_key)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return josepy.JWKRSA(key=private_key)
    raise ValueError("an account key must be an EC or RSA private key")


def signature_algorithm(key: josepy.JWK) -> josepy.JWASignature:
    """The JWS algorithm that matches the key (RFC 7518 §3.4: the curve fixes the hash)."""
    if isinstance(key, josepy.JWKEC):
        curve = key.key.curve.name
        if curve not in _EC_ALGORITHMS:
            raise ValueError(f"unsupported account key curve {curve}")
        return _EC_ALGORITHMS[curve]
    if isinstance(key, josepy.JWKRSA):
        return josepy.RS256
    raise ValueError(f"unsupported account key type {type(key).__name__}")
