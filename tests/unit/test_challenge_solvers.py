"""What the dns-01 and http-01 solvers present for a key authorization, checked against
certbot's `acme` challenge classes (an independent computation)."""

from __future__ import annotations

import josepy
import pytest
from acme import challenges as acme_challenges
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certok.challenge_solver import ChallengeSolver, ExplainsMissingChallenge
from certok.dnszone.solver import Dns01Solver
from certok.http01.solver import Http01Solver
from certok.issuance import key_authorization

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


@pytest.mark.parametrize(
    "key",
    [
        josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1())),
        josepy.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
)
def test_each_solver_presents_what_its_challenge_type_asks_for(key: josepy.JWK) -> None:
    raw_token = josepy.b64decode(TOKEN)
    authorization = key_authorization(key, TOKEN)
    dns: ChallengeSolver = Dns01Solver(settle_seconds=2.0)
    http: ChallengeSolver = Http01Solver()
    assert dns.value(authorization) == acme_challenges.DNS01(token=raw_token).validation(key)
    assert http.value(authorization) == acme_challenges.HTTP01(token=raw_token).validation(key)
    assert (dns.acme_type, http.acme_type) == ("dns-01", "http-01")


def test_only_http01_explains_a_missing_challenge() -> None:
    # Wildcards: a CA offers only dns-01 for them; the hint tells the tenant which type works.
    assert isinstance(Http01Solver(), ExplainsMissingChallenge)
    assert "type=dns" in Http01Solver().missing_challenge_hint()
    assert not isinstance(Dns01Solver(settle_seconds=0.0), ExplainsMissingChallenge)
