"""The JWS around every ACME POST (RFC 8555 §6.2), built straight from dicts.

The `acme` library signs through josepy's object model: a Header object with a validating
encoder per field, a Signature and a JWS object, each serialised back through the same
machinery. That was about a seventh of a worker process's CPU under load (py-spy, 200 orders
in flight), several times the ECDSA signature itself. The message is small and fixed: a
protected header {alg, nonce, url, kid | jwk}, the payload, the signature, each base64url
without padding, in the flattened JSON serialization. josepy still does what needs care:
the signature (`JWASignature.sign`: hash by algorithm, ECDSA's DER turned into r || s) and
the public JWK. `tests/unit/test_jws.py` checks the result against josepy's own verifier.
"""

from __future__ import annotations

import json
from typing import Any

import josepy
from josepy.json_util import encode_b64jose


def flattened_jws(
    payload: bytes,
    *,
    key: josepy.JWK,
    alg: josepy.JWASignature,
    nonce: bytes,
    url: str,
    kid: str | None,
) -> str:
    """The JWS for one POST: signed by `key`, identified by `kid` (the account URL) or, before
    there is an account (newAccount), by the public key itself."""
    header: dict[str, Any] = {"alg": alg.name, "nonce": encode_b64jose(nonce), "url": url}
    if kid is None:
        header["jwk"] = key.public_key().to_partial_json()
    else:
        header["kid"] = kid
    protected = encode_b64jose(json.dumps(header, separators=(",", ":")).encode())
    encoded_payload = encode_b64jose(payload)
    signature = alg.sign(key.key, f"{protected}.{encoded_payload}".encode("ascii"))
    return json.dumps(
        {
            "protected": protected,
            "payload": encoded_payload,
            "signature": encode_b64jose(signature),
        },
        separators=(",", ":"),
    )
