"""The ACME engine adapter: the only package that imports certbot's `acme` or catches its errors.

Every exchange with a CA goes through :class:`AcmeSession`, one protocol step per call, and
every failure comes out as an :class:`AcmeProblem` whose :class:`ProblemKind` says what to
do next.
"""

from certok.issuance.account_keys import (
    account_key_from_pem,
    account_key_to_pem,
    new_account_key,
    signature_algorithm,
)
from certok.issuance.challenges import (
    dns01_txt_value,
    http01_key_authorization,
    key_authorization,
    valid_token,
)
from certok.issuance.problems import (
    AcmeProblem,
    ProblemKind,
    classify_error,
    describe_problem,
    parse_retry_after,
)
from certok.issuance.resources import (
    STATUS_INVALID,
    STATUS_PENDING,
    STATUS_PROCESSING,
    STATUS_READY,
    STATUS_VALID,
    AuthzInfo,
    ChallengeInfo,
    OrderInfo,
)
from certok.issuance.session import AcmeSession
from certok.issuance.zerossl import fetch_zerossl_eab

__all__ = [
    "STATUS_INVALID",
    "STATUS_PENDING",
    "STATUS_PROCESSING",
    "STATUS_READY",
    "STATUS_VALID",
    "AcmeProblem",
    "AcmeSession",
    "AuthzInfo",
    "ChallengeInfo",
    "OrderInfo",
    "ProblemKind",
    "account_key_from_pem",
    "account_key_to_pem",
    "classify_error",
    "describe_problem",
    "dns01_txt_value",
    "fetch_zerossl_eab",
    "http01_key_authorization",
    "key_authorization",
    "new_account_key",
    "parse_retry_after",
    "signature_algorithm",
    "valid_token",
]
