"""Pure logic of the ACME adapter: error classification, Retry-After, challenge material,
account keys and the ZeroSSL EAB fetch (against an in-process fake, never the real host)."""

from __future__ import annotations

import datetime as dt
import json

import josepy
import pytest
import requests
from acme import challenges as acme_challenges
from acme import errors as acme_errors
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certok.issuance import (
    AcmeProblem,
    ProblemKind,
    account_key_from_pem,
    account_key_to_pem,
    classify_error,
    describe_problem,
    dns01_txt_value,
    http01_key_authorization,
    new_account_key,
    parse_retry_after,
    signature_algorithm,
    valid_token,
)
from certok.issuance.problems import (
    BAD_CONFIGURATION,
    GARBLED_RESPONSE,
    HTTP_ERROR,
    TIMEOUT,
    TRANSPORT_ERROR,
    UNEXPECTED,
    short_type,
)

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
PREFIX = "urn:ietf:params:acme:error:"


def acme_error(code: str, detail: str = "what the CA said", **fields: object) -> messages.Error:
    return messages.Error.from_json({"type": PREFIX + code, "detail": detail, **fields})


def http_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None):
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update(headers or {})
    response.url = "https://ca.test/acme/thing"
    response.reason = "Reason"
    return response


# --- classify_error: ACME problem documents -------------------------------------------------

PROBLEM_KINDS = {
    "badNonce": ProblemKind.RETRYABLE,
    "serverInternal": ProblemKind.RETRYABLE,
    "orderNotReady": ProblemKind.RETRYABLE,
    "rateLimited": ProblemKind.RATE_LIMITED,
    "connection": ProblemKind.AUTHORIZATION_INVALID,
    "dns": ProblemKind.AUTHORIZATION_INVALID,
    "incorrectResponse": ProblemKind.AUTHORIZATION_INVALID,
    "unauthorized": ProblemKind.AUTHORIZATION_INVALID,
    "tls": ProblemKind.AUTHORIZATION_INVALID,
    "rejectedIdentifier": ProblemKind.REJECTED,
    "caa": ProblemKind.REJECTED,
    "badCSR": ProblemKind.REJECTED,
    "malformed": ProblemKind.REJECTED,
    "unsupportedIdentifier": ProblemKind.REJECTED,
    "externalAccountRequired": ProblemKind.REJECTED,
    "accountDoesNotExist": ProblemKind.REJECTED,
    "badSignatureAlgorithm": ProblemKind.REJECTED,
    "userActionRequired": ProblemKind.REJECTED,
}


@pytest.mark.parametrize(("code", "kind"), sorted(PROBLEM_KINDS.items()))
def test_each_acme_problem_type_has_its_kind(code: str, kind: ProblemKind) -> None:
    problem = classify_error(acme_error(code, "the detail"), http_status=400)
    assert problem.kind is kind
    assert problem.type == code
    assert problem.detail == "the detail"
    assert problem.http_status == 400


def test_rate_limited_keeps_retry_after() -> None:
    when = NOW + dt.timedelta(hours=3)
    problem = classify_error(acme_error("rateLimited"), http_status=429, retry_after=when)
    assert problem.kind is ProblemKind.RATE_LIMITED
    assert problem.retry_after == when


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, ProblemKind.RETRYABLE),
        (503, ProblemKind.RETRYABLE),
        (429, ProblemKind.RATE_LIMITED),
        (400, ProblemKind.REJECTED),
        (None, ProblemKind.REJECTED),
    ],
)
def test_unknown_problem_type_goes_by_http_status(status: int | None, kind: ProblemKind) -> None:
    error = messages.Error.from_json({"type": "urn:example:whatever", "detail": "?"})
    problem = classify_error(error, http_status=status)
    assert problem.kind is kind
    assert problem.type == "urn:example:whatever"


def test_compound_problem_takes_the_gravest_subproblem() -> None:
    compound = messages.Error.from_json(
        {
            "type": PREFIX + "compound",
            "detail": "several",
            "subproblems": [
                {"type": PREFIX + "dns", "detail": "no TXT"},
                {"type": PREFIX + "rejectedIdentifier", "detail": "blocked"},
            ],
        }
    )
    assert classify_error(compound).kind is ProblemKind.REJECTED
    dead = messages.Error.from_json(
        {
            "type": PREFIX + "compound",
            "subproblems": [
                {"type": PREFIX + "dns", "detail": "no TXT"},
                {"type": PREFIX + "connection", "detail": "refused"},
            ],
        }
    )
    assert classify_error(dead).kind is ProblemKind.AUTHORIZATION_INVALID


def test_issuance_error_is_classified_by_its_problem() -> None:
    problem = classify_error(acme_errors.IssuanceError(acme_error("badCSR", "key too short")))
    assert (problem.kind, problem.type, problem.detail) == (
        ProblemKind.REJECTED,
        "badCSR",
        "key too short",
    )


def test_an_acme_problem_passes_through_unchanged() -> None:
    original = AcmeProblem(ProblemKind.REJECTED, "x", "y")
    assert classify_error(original) is original


# --- classify_error: transport and garbled answers ------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "problem_type"),
    [
        (requests.exceptions.ConnectTimeout("slow"), ProblemKind.RETRYABLE, TIMEOUT),
        (requests.exceptions.ReadTimeout("slow"), ProblemKind.RETRYABLE, TIMEOUT),
        (requests.exceptions.ConnectionError("refused"), ProblemKind.RETRYABLE, TRANSPORT_ERROR),
        (requests.exceptions.SSLError("bad cert"), ProblemKind.RETRYABLE, TRANSPORT_ERROR),
        (requests.exceptions.MissingSchema("no scheme"), ProblemKind.REJECTED, BAD_CONFIGURATION),
        (requests.exceptions.InvalidURL("bad url"), ProblemKind.REJECTED, BAD_CONFIGURATION),
        (
            requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0),
            ProblemKind.RETRYABLE,
            GARBLED_RESPONSE,
        ),
        (
            json.JSONDecodeError("Expecting value", "<html>", 0),
            ProblemKind.RETRYABLE,
            GARBLED_RESPONSE,
        ),
        (josepy.DeserializationError("bad"), ProblemKind.RETRYABLE, GARBLED_RESPONSE),
        (acme_errors.TimeoutError(), ProblemKind.RETRYABLE, TIMEOUT),
        (
            acme_errors.ClientError('"up" Link header missing'),
            ProblemKind.RETRYABLE,
            GARBLED_RESPONSE,
        ),
        (acme_errors.BadNonce("x y", ValueError("bad")), ProblemKind.RETRYABLE, GARBLED_RESPONSE),
        (acme_errors.ConflictError("https://ca.test/x"), ProblemKind.RETRYABLE, HTTP_ERROR),
        (KeyError("newOrder"), ProblemKind.RETRYABLE, UNEXPECTED),
    ],
)
def test_transport_and_garbled_failures(
    exc: BaseException, kind: ProblemKind, problem_type: str
) -> None:
    problem = classify_error(exc)
    assert (problem.kind, problem.type) == (kind, problem_type)
    assert problem.detail


def test_tls_failure_says_to_set_the_ca_bundle() -> None:
    problem = classify_error(requests.exceptions.SSLError("certificate verify failed"))
    assert "ca_bundle" in problem.detail
    assert "certificate verify failed" in problem.detail


def test_missing_nonce_is_retryable() -> None:
    response = http_response(200)
    response.request = requests.Request("POST", "https://ca.test/x").prepare()
    problem = classify_error(acme_errors.MissingNonce(response))
    assert (problem.kind, problem.type) == (ProblemKind.RETRYABLE, GARBLED_RESPONSE)


@pytest.mark.parametrize(
    ("status", "kind", "problem_type"),
    [
        (503, ProblemKind.RETRYABLE, HTTP_ERROR),
        (502, ProblemKind.RETRYABLE, HTTP_ERROR),
        (429, ProblemKind.RATE_LIMITED, "rateLimited"),
        (404, ProblemKind.REJECTED, HTTP_ERROR),
    ],
)
def test_error_status_without_problem_document(
    status: int, kind: ProblemKind, problem_type: str
) -> None:
    when = NOW + dt.timedelta(seconds=30)
    exc = acme_errors.ClientError(http_response(status, b"<html>busy</html>"))
    problem = classify_error(exc, http_status=status, retry_after=when)
    assert (problem.kind, problem.type, problem.http_status) == (kind, problem_type, status)
    assert str(status) in problem.detail
    assert problem.retry_after == when


def test_undeserializable_problem_document_uses_the_status() -> None:
    response = http_response(500, b"[1, 2]")
    exc = acme_errors.ClientError((response, josepy.DeserializationError("list")))
    assert classify_error(exc).kind is ProblemKind.RETRYABLE


# --- describe_problem ------------------------------------------------------------------------


def test_describe_problem_with_subproblems_from_json() -> None:
    text = describe_problem(
        {
            "type": PREFIX + "rejectedIdentifier",
            "detail": "2 names refused",
            "subproblems": [
                {
                    "type": PREFIX + "rejectedIdentifier",
                    "detail": "blocked by policy",
                    "identifier": {"type": "dns", "value": "a.test"},
                },
                {
                    "type": PREFIX + "caa",
                    "detail": "CAA forbids",
                    "identifier": {"type": "dns", "value": "b.test"},
                },
            ],
        }
    )
    assert text == (
        "rejectedIdentifier: 2 names refused "
        "(a.test: rejectedIdentifier: blocked by policy; b.test: caa: CAA forbids)"
    )


def test_describe_problem_from_library_error_and_without_detail() -> None:
    error = messages.Error.from_json(
        {
            "type": PREFIX + "unauthorized",
            "detail": "Incorrect TXT record",
            "subproblems": [
                {"type": PREFIX + "dns", "identifier": {"type": "dns", "value": "c.test"}}
            ],
        }
    )
    text = describe_problem(error)
    assert text.startswith("unauthorized: Incorrect TXT record (c.test: dns: ")
    # No detail: the RFC's description of the type stands in.
    assert messages.ERROR_CODES["dns"] in text
    assert describe_problem(None) == "the CA gave no reason"


def test_describe_problem_cleans_untrusted_text() -> None:
    text = describe_problem(
        {"type": PREFIX + "malformed", "detail": "line1\nline2\x1b[31m" + "x" * 5000}
    )
    assert "\n" not in text and "\x1b" not in text
    assert text.startswith("malformed: line1 line2 [31m")
    assert len(text) <= 2000


def test_short_type() -> None:
    assert short_type(PREFIX + "badNonce") == "badNonce"
    assert short_type("urn:example:other") == "urn:example:other"
    assert short_type(None) == "about:blank"


# --- Retry-After ---------------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert parse_retry_after("120", NOW) == NOW + dt.timedelta(seconds=120)
    assert parse_retry_after(" 0 ", NOW) == NOW


def test_retry_after_http_date_is_aware_utc() -> None:
    when = parse_retry_after("Sat, 01 Mar 2025 13:30:00 GMT", NOW)
    assert when == dt.datetime(2025, 3, 1, 13, 30, tzinfo=dt.UTC)
    assert when is not None and when.utcoffset() == dt.timedelta(0)
    # An obsolete numeric zone is converted to UTC.
    assert parse_retry_after("Sat, 01 Mar 2025 14:30:00 +0100", NOW) == when


def test_retry_after_naive_now_is_not_required_to_be_utc() -> None:
    other_zone = NOW.astimezone(dt.timezone(dt.timedelta(hours=8)))
    when = parse_retry_after("60", other_zone)
    assert when == NOW + dt.timedelta(seconds=60)
    assert when is not None and when.tzinfo == dt.UTC


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Sat, 99 Foo 2025"])
def test_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_absurd_retry_after_is_capped() -> None:
    when = parse_retry_after("99999999999999999999", NOW)
    assert when is not None and NOW < when <= NOW + dt.timedelta(days=366)


# --- challenge material ----------------------------------------------------------------------

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


@pytest.mark.parametrize("token", [TOKEN, "a", "A-_z09", "x" * 128, "DGyRejmCefe7v4NfDGDKfA"])
def test_valid_tokens(token: str) -> None:
    assert valid_token(token)


@pytest.mark.parametrize(
    "token",
    ["", "x" * 129, "../etc/passwd", "a/b", "a.b", "a b", "abc\n", "tök", "a=", None, 42],
)
def test_invalid_tokens(token: object) -> None:
    assert not valid_token(token)


@pytest.mark.parametrize(
    "key",
    [
        josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1())),
        josepy.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
)
def test_challenge_material_matches_the_acme_library(key: josepy.JWK) -> None:
    # An independent computation: the library's own challenge classes.
    raw_token = josepy.b64decode(TOKEN)
    expected_key_authorization = acme_challenges.HTTP01(token=raw_token).key_authorization(key)
    assert http01_key_authorization(key, TOKEN) == expected_key_authorization
    assert dns01_txt_value(key, TOKEN) == acme_challenges.DNS01(token=raw_token).validation(key)
    # The public half gives the same answer as the private key.
    assert dns01_txt_value(key.public_key(), TOKEN) == dns01_txt_value(key, TOKEN)


def test_challenge_material_refuses_unsafe_tokens() -> None:
    key = new_account_key()
    with pytest.raises(ValueError, match="token"):
        dns01_txt_value(key, "../x")
    with pytest.raises(ValueError, match="token"):
        http01_key_authorization(key, "")


# --- account keys ----------------------------------------------------------------------------


def test_new_account_key_is_p256_es256_and_round_trips() -> None:
    key = new_account_key()
    assert isinstance(key, josepy.JWKEC)
    assert key.key.curve.name == "secp256r1"
    assert signature_algorithm(key) is josepy.ES256
    pem = account_key_to_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = account_key_from_pem(pem)
    assert loaded.thumbprint() == key.thumbprint()
    assert account_key_from_pem(pem.decode("ascii")).thumbprint() == key.thumbprint()


def test_rsa_account_key_loads_and_signs_rs256() -> None:
    key = josepy.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    loaded = account_key_from_pem(account_key_to_pem(key))
    assert isinstance(loaded, josepy.JWKRSA)
    assert signature_algorithm(loaded) is josepy.RS256


def test_public_key_cannot_be_saved_as_an_account_key() -> None:
    with pytest.raises(ValueError, match="private"):
        account_key_to_pem(new_account_key().public_key())


def test_account_key_from_garbage_fails() -> None:
    with pytest.raises(ValueError):
        account_key_from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


# --- the network's handling of 409 ------------------------------------------------------------


def test_conflict_with_a_problem_document_keeps_the_problem() -> None:
    from certok.issuance.network import NonceRetryingNetwork

    body = json.dumps({"type": PREFIX + "alreadyReplaced", "detail": "replaced already"})
    response = http_response(409, body.encode(), {"Content-Type": "application/problem+json"})
    with pytest.raises(messages.Error) as caught:
        NonceRetryingNetwork._check_response(response)
    assert short_type(caught.value.typ) == "alreadyReplaced"
    assert classify_error(caught.value, http_status=409).kind is ProblemKind.RETRYABLE


def test_conflict_naming_an_existing_resource_stays_a_conflict() -> None:
    from certok.issuance.network import NonceRetryingNetwork

    response = http_response(409, b"{}", {"Location": "https://ca.test/acct/1"})
    with pytest.raises(acme_errors.ConflictError) as caught:
        NonceRetryingNetwork._check_response(response)
    assert caught.value.location == "https://ca.test/acct/1"
