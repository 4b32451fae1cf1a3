"""certok's JWS for ACME POSTs (certok/issuance/jws.py) against josepy's and the `acme`
library's own: what it signs verifies with josepy, and carries the header the library would."""

from __future__ import annotations

import json

import josepy
import pytest
from acme import jws as acme_jws
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certok.issuance.account_keys import signature_algorithm
from certok.issuance.jws import flattened_jws

NONCE = b"\x01\x02nonce-bytes\xff"
URL = "https://ca.test/acme/new-order"
KID = "https://ca.test/acme/acct/42"

KEYS = {
    "ES256": josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1())),
    "ES384": josepy.JWKEC(key=ec.generate_private_key(ec.SECP384R1())),
    "RS256": josepy.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
}
PAYLOAD = (
    messages.NewOrder(
        identifiers=(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value="a.customer.test"),)
    )
    .json_dumps()
    .encode()
)


def _library_header(key: josepy.JWK, kid: str | None) -> dict[str, object]:
    signed = acme_jws.JWS.sign(
        PAYLOAD, key=key, alg=signature_algorithm(key), nonce=NONCE, url=URL, kid=kid
    )
    return json.loads(signed.signature.protected)


@pytest.mark.parametrize("name", sorted(KEYS))
@pytest.mark.parametrize("kid", [KID, None], ids=["kid", "jwk"])
def test_the_jws_verifies_with_josepy_and_has_the_librarys_header(
    name: str, kid: str | None
) -> None:
    key = KEYS[name]
    text = flattened_jws(
        PAYLOAD, key=key, alg=signature_algorithm(key), nonce=NONCE, url=URL, kid=kid
    )
    parsed = acme_jws.JWS.json_loads(text)
    assert parsed.verify(key.public_key())
    assert parsed.payload == PAYLOAD
    # acme's JWS header class (acme.jws.Header) adds nonce, url and kid to josepy's.
    header = parsed.signature.combined
    assert isinstance(header, acme_jws.Header) and header.alg is not None
    assert (header.alg.name, header.nonce, header.url, header.kid) == (name, NONCE, URL, kid)
    protected = json.loads(parsed.signature.protected)
    assert protected == _library_header(key, kid)
    assert set(json.loads(text)) == {"protected", "payload", "signature"}  # flattened form


def test_an_altered_payload_or_header_no_longer_verifies() -> None:
    key = KEYS["ES256"]
    text = flattened_jws(PAYLOAD, key=key, alg=josepy.ES256, nonce=NONCE, url=URL, kid=KID)
    for field, other in (("payload", b"{}"), ("protected", b'{"alg":"ES256"}')):
        changed = json.loads(text)
        changed[field] = josepy.b64encode(other).decode()
        assert not acme_jws.JWS.json_loads(json.dumps(changed)).verify(key.public_key())


def test_post_as_get_signs_an_empty_payload() -> None:
    key = KEYS["ES256"]
    text = flattened_jws(b"", key=key, alg=josepy.ES256, nonce=NONCE, url=URL, kid=KID)
    assert json.loads(text)["payload"] == ""
    assert acme_jws.JWS.json_loads(text).verify(key.public_key())
