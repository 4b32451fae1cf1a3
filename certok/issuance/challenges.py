"""Challenge material: key authorizations (RFC 8555 §8.1) and DNS-01 TXT values (§8.4).

Pure functions of the account key and the CA's token. The token is untrusted input: it must
pass :func:`valid_token` before it touches a path, a file or a DNS name (uacme#64).
"""

from __future__ import annotations

import hashlib
import re

import josepy
from cryptography.hazmat.primitives import hashes

# RFC 8555 §8.3/§8.4: "token ... MUST NOT contain any characters outside the base64url
# alphabet". 128 characters is far above the 22-43 that CAs send and keeps paths short.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


def valid_token(token: object) -> bool:
    """True when the CA's token is safe to use: ``^[A-Za-z0-9_-]{1,128}$``."""
    return isinstance(token, str) and _TOKEN.fullmatch(token) is not None


def _checked(token: str) -> str:
    if not valid_token(token):
        raise ValueError("the challenge token is not 1-128 base64url characters")
    return token


def key_authorization(account_key: josepy.JWK, token: str) -> str:
    """``token || '.' || base64url(JWK_Thumbprint(accountKey))`` (RFC 8555 §8.1).

    Every challenge type derives what it presents from this (the solvers beside
    `certok.dnszone` and `certok.http01`); http-01 presents it as it is.
    """
    thumbprint = account_key.public_key().thumbprint(hash_function=hashes.SHA256)
    return f"{_checked(token)}.{josepy.b64encode(thumbprint).decode('ascii')}"


http01_key_authorization = key_authorization


def dns01_txt_value(account_key: josepy.JWK, token: str) -> str:
    """The TXT value for ``_acme-challenge.<name>``: base64url(SHA-256(key authorization))."""
    digest = hashlib.sha256(key_authorization(account_key, token).encode("ascii"))
    return josepy.b64encode(digest.digest()).decode("ascii")
