"""Standard Webhooks signing (github.com/standard-webhooks/standard-webhooks, spec).

Every delivery carries `webhook-id`, `webhook-timestamp` (unix seconds) and
`webhook-signature: v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, where the key
is the base64 part of the endpoint's `whsec_` secret. While a secret rotates, the previous one
signs too: the header then holds two space-separated signatures, and a receiver holding
either secret verifies the message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of a secret, not a secret
# The spec allows 24-64 bytes; 32 is what its reference libraries generate.
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_` secret stands for."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of the message under `secret`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    secrets_in_use: list[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers, with one signature per secret in use."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign(secret, message_id, timestamp, body) for secret in secrets_in_use
        ),
    }


def derived_secret(root: bytes, subject: str) -> str:
    """A stable `whsec_` secret for `subject` (a tenant's notifyUrl deliveries) from a key
    derived off the SecretBox: nothing to store, and it never leaves certok unless asked."""
    key = hmac.new(root, subject.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")
