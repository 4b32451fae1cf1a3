"""The one place ACME errors are classified.

Everything that can go wrong in an exchange with a CA (a problem document, a transport
failure, a garbled answer) becomes an :class:`AcmeProblem` whose :class:`ProblemKind` tells
the worker what to do next (RFC 8555 §6.7; docs/retries.md has the table):

- RETRYABLE: back off and try the same step again (badNonce, serverInternal, 5xx,
  timeouts, connection failures, garbled responses, orderNotReady);
- RATE_LIMITED: never retry before ``retry_after``;
- AUTHORIZATION_INVALID: the CA could not validate a name (connection, dns, incorrectResponse,
  unauthorized, tls); a new order only after the pre-check passes again;
- REJECTED: terminal until the configuration changes; fail with the CA's detail.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import enum
import json
import re
from collections.abc import Mapping
from typing import Any

import josepy
import requests
from acme import errors as acme_errors
from acme import messages

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"

# Our own problem types for failures that never reached an ACME problem document. They are
# deliberately not RFC 8555 names ("connection" and "tls" mean a failed *validation* there).
TRANSPORT_ERROR = "transportError"
TIMEOUT = "timeout"
GARBLED_RESPONSE = "garbledResponse"
HTTP_ERROR = "httpError"
BAD_CONFIGURATION = "badConfiguration"
UNEXPECTED = "unexpected"

# CA text ends up in logs, API messages and the database: keep it printable and bounded.
_MAX_DETAIL_CHARS = 2000
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
# Retry-After beyond this is treated as this (a CA saying "in 300 years" means "not soon").
_MAX_RETRY_AFTER = dt.timedelta(days=366)


class ProblemKind(enum.Enum):
    RETRYABLE = "retryable"
    RATE_LIMITED = "rate_limited"
    AUTHORIZATION_INVALID = "authorization_invalid"
    REJECTED = "rejected"


# When several problems arrive together (a "compound" problem), the gravest one decides.
_SEVERITY = {
    ProblemKind.RETRYABLE: 0,
    ProblemKind.RATE_LIMITED: 1,
    ProblemKind.AUTHORIZATION_INVALID: 2,
    ProblemKind.REJECTED: 3,
}

KIND_BY_TYPE: Mapping[str, ProblemKind] = {
    # Transient at the CA: back off and try again.
    "badNonce": ProblemKind.RETRYABLE,
    "serverInternal": ProblemKind.RETRYABLE,
    "orderNotReady": ProblemKind.RETRYABLE,
    # A newOrder with `replaces` is asked again without it (certok/certificates/ordering.py).
    "alreadyReplaced": ProblemKind.RETRYABLE,
    "rateLimited": ProblemKind.RATE_LIMITED,
    # The CA could not validate the name: the authorization is invalid (RFC 8555 §7.1.6).
    "connection": ProblemKind.AUTHORIZATION_INVALID,
    "dns": ProblemKind.AUTHORIZATION_INVALID,
    "dnssec": ProblemKind.AUTHORIZATION_INVALID,
    "unknownHost": ProblemKind.AUTHORIZATION_INVALID,
    "incorrectResponse": ProblemKind.AUTHORIZATION_INVALID,
    "unauthorized": ProblemKind.AUTHORIZATION_INVALID,
    "tls": ProblemKind.AUTHORIZATION_INVALID,
    # Terminal until the configuration changes.
    "rejectedIdentifier": ProblemKind.REJECTED,
    "caa": ProblemKind.REJECTED,
    "badCSR": ProblemKind.REJECTED,
    "malformed": ProblemKind.REJECTED,
    "unsupportedIdentifier": ProblemKind.REJECTED,
    "externalAccountRequired": ProblemKind.REJECTED,
    "accountDoesNotExist": ProblemKind.REJECTED,
    "badPublicKey": ProblemKind.REJECTED,
    "badSignatureAlgorithm": ProblemKind.REJECTED,
    "invalidContact": ProblemKind.REJECTED,
    "invalidEmail": ProblemKind.REJECTED,
    "unsupportedContact": ProblemKind.REJECTED,
    "userActionRequired": ProblemKind.REJECTED,
    "agreementRequired": ProblemKind.REJECTED,
    "badRevocationReason": ProblemKind.REJECTED,
    "alreadyRevoked": ProblemKind.REJECTED,
    "invalidProfile": ProblemKind.REJECTED,
}


class AcmeProblem(Exception):
    """An ACME exchange failed; ``kind`` says what the worker should do about it."""

    def __init__(
        self,
        kind: ProblemKind,
        type: str,  # the RFC 7807 member name, as the worker reads it
        detail: str,
        *,
        retry_after: dt.datetime | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(f"{type}: {detail}")
        self.kind = kind
        self.type = type
        self.detail = detail
        self.retry_after = retry_after
        self.http_status = http_status

    def __repr__(self) -> str:
        return f"AcmeProblem({self.kind.name}, {self.type!r}, {self.detail!r})"


def short_type(problem_type: str | None) -> str:
    """`urn:ietf:params:acme:error:badNonce` → `badNonce`; other URIs stay as they are."""
    if not problem_type:
        return "about:blank"
    if problem_type.startswith(ACME_ERROR_PREFIX):
        return problem_type[len(ACME_ERROR_PREFIX) :]
    return problem_type


def clean_text(text: str) -> str:
    """Untrusted CA text made safe for one log line: no control characters, bounded length."""
    flat = _CONTROL_CHARS.sub(" ", text).strip()
    if len(flat) > _MAX_DETAIL_CHARS:
        return flat[: _MAX_DETAIL_CHARS - 1] + "…"
    return flat


def kind_for_type(problem_type: str, http_status: int | None = None) -> ProblemKind:
    """The kind of an ACME problem type (short or full); unknown types go by HTTP status."""
    kind = KIND_BY_TYPE.get(short_type(problem_type))
    if kind is not None:
        return kind
    return _kind_for_status(http_status)


def _kind_for_status(http_status: int | None) -> ProblemKind:
    if http_status == 429:
        return ProblemKind.RATE_LIMITED
    if http_status is not None and (http_status >= 500 or http_status in (408, 425)):
        return ProblemKind.RETRYABLE
    # A 4xx with an unknown problem type (or no status at all, as in an order's `error`):
    # retrying the same request would only get the same answer.
    return ProblemKind.REJECTED


# --- describing problem documents ---------------------------------------------------------


def _problem_fields(problem: Mapping[str, Any] | messages.Error) -> dict[str, Any]:
    """Type, detail, identifier and subproblems of a problem, whichever form it came in."""
    if isinstance(problem, messages.Error):
        identifier = problem.identifier.value if problem.identifier is not None else None
        return {
            "type": problem.typ,
            "detail": problem.detail or problem.title or problem.description,
            "identifier": identifier,
            "subproblems": list(problem.subproblems or ()),
        }
    identifier = problem.get("identifier")
    value = identifier.get("value") if isinstance(identifier, Mapping) else None
    subproblems = problem.get("subproblems")
    detail = problem.get("detail") or problem.get("title")
    return {
        "type": problem.get("type") if isinstance(problem.get("type"), str) else None,
        "detail": detail if isinstance(detail, str) else None,
        "identifier": value if isinstance(value, str) else None,
        "subproblems": [p for p in subproblems if isinstance(p, Mapping | messages.Error)]
        if isinstance(subproblems, list | tuple)
        else [],
    }


def describe_problem(problem: Mapping[str, Any] | messages.Error | None) -> str:
    """A problem document as one readable line, subproblems included.

    ``{"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "2 names refused",
    "subproblems": [{"type": "…:rejectedIdentifier", "detail": "blocked", "identifier":
    {"type": "dns", "value": "a.test"}}]}`` → ``rejectedIdentifier: 2 names refused
    (a.test: rejectedIdentifier: blocked)``.
    """
    if problem is None:
        return "the CA gave no reason"
    kind, detail = _type_and_detail(problem)
    return clean_text(f"{kind}: {detail}")


def _type_and_detail(problem: Mapping[str, Any] | messages.Error) -> tuple[str, str]:
    """The short type, and the detail followed by each subproblem's."""
    fields = _problem_fields(problem)
    kind = short_type(fields["type"])
    detail = fields["detail"] or messages.ERROR_CODES.get(kind, "no detail given")
    parts = []
    for sub in fields["subproblems"]:
        sub_kind, sub_detail = _type_and_detail(sub)
        identifier = _problem_fields(sub)["identifier"]
        prefix = f"{identifier}: " if identifier else ""
        parts.append(f"{prefix}{sub_kind}: {sub_detail}")
    if parts:
        detail += " (" + "; ".join(parts) + ")"
    return kind, clean_text(detail)


def _problem_kind(problem: messages.Error, http_status: int | None) -> ProblemKind:
    kind_name = short_type(problem.typ)
    if kind_name == "compound" or (kind_name not in KIND_BY_TYPE and problem.subproblems):
        kinds = [_problem_kind(sub, None) for sub in problem.subproblems or ()]
        if kinds:
            return max(kinds, key=_SEVERITY.__getitem__)
    return kind_for_type(kind_name, http_status)


def problem_from_error(
    error: messages.Error,
    *,
    http_status: int | None = None,
    retry_after: dt.datetime | None = None,
) -> AcmeProblem:
    """An ACME problem document (from a response or an order/challenge `error`) classified."""
    kind_name, detail = _type_and_detail(error)
    return AcmeProblem(
        _problem_kind(error, http_status),
        kind_name,
        detail,
        retry_after=retry_after,
        http_status=http_status,
    )


# --- classifying exceptions ----------------------------------------------------------------


def classify_error(
    exc: BaseException,
    *,
    http_status: int | None = None,
    retry_after: dt.datetime | None = None,
) -> AcmeProblem:
    """Map any failure of an ACME exchange to an :class:`AcmeProblem`.

    ``http_status`` and ``retry_after`` come from the failed response when the caller saw
    one (the `acme` library drops the response when it raises a problem document).
    """
    if isinstance(exc, AcmeProblem):
        return exc
    if isinstance(exc, messages.Error):
        return problem_from_error(exc, http_status=http_status, retry_after=retry_after)
    if isinstance(exc, acme_errors.IssuanceError):
        return problem_from_error(exc.error, http_status=http_status, retry_after=retry_after)
    if isinstance(exc, acme_errors.Error):
        return _classify_library_error(exc, http_status=http_status, retry_after=retry_after)
    if isinstance(exc, requests.RequestException):
        # Checked before ValueError: requests' JSONDecodeError is both.
        if isinstance(exc, requests.exceptions.JSONDecodeError):
            return _garbled(f"the CA's answer is not valid JSON ({exc})")
        return _classify_transport_error(exc)
    if isinstance(exc, josepy.DeserializationError | json.JSONDecodeError):
        return _garbled(f"the CA's answer does not have the expected shape ({exc})")
    return AcmeProblem(
        ProblemKind.RETRYABLE,
        UNEXPECTED,
        clean_text(f"unexpected {type(exc).__name__} talking to the CA: {exc}"),
        retry_after=retry_after,
        http_status=http_status,
    )


def _garbled(detail: str) -> AcmeProblem:
    return AcmeProblem(ProblemKind.RETRYABLE, GARBLED_RESPONSE, clean_text(detail))


def _classify_library_error(
    exc: acme_errors.Error, *, http_status: int | None, retry_after: dt.datetime | None
) -> AcmeProblem:
    if isinstance(exc, acme_errors.ValidationError):
        names = ", ".join(str(a.body.identifier.value) for a in exc.failed_authzrs)
        return AcmeProblem(
            ProblemKind.AUTHORIZATION_INVALID,
            "validation",
            clean_text(f"validation failed: {names}"),
        )
    if isinstance(exc, acme_errors.TimeoutError):
        return AcmeProblem(ProblemKind.RETRYABLE, TIMEOUT, "the CA did not answer in time")
    if isinstance(exc, acme_errors.ConflictError):
        return AcmeProblem(
            ProblemKind.RETRYABLE,
            HTTP_ERROR,
            f"the CA answered 409 Conflict (location {exc.location})",
            http_status=409,
        )
    if isinstance(exc, acme_errors.MissingNonce):
        return _garbled("the CA's answer carried no Replay-Nonce header")
    if isinstance(exc, acme_errors.BadNonce):
        return _garbled(f"the CA sent an unreadable Replay-Nonce ({exc})")
    if isinstance(exc, acme_errors.ClientError) and exc.args:
        response = exc.args[0]
        if isinstance(response, tuple) and response:  # (response, deserialization error)
            response = response[0]
        if isinstance(response, requests.Response):
            return _classify_bare_http_error(response, retry_after=retry_after)
        return _garbled(f"unexpected answer from the CA: {exc}")
    return AcmeProblem(
        ProblemKind.RETRYABLE,
        UNEXPECTED,
        clean_text(f"{type(exc).__name__}: {exc}"),
        retry_after=retry_after,
        http_status=http_status,
    )


def _classify_bare_http_error(
    response: requests.Response, *, retry_after: dt.datetime | None
) -> AcmeProblem:
    """An error status whose body is not a problem document (a proxy's page, an empty 503)."""
    status = response.status_code
    kind = _kind_for_status(status)
    problem_type = "rateLimited" if kind is ProblemKind.RATE_LIMITED else HTTP_ERROR
    reason = response.reason or ""
    detail = f"HTTP {status} {reason} from {response.url} without a problem document"
    if status == 404:
        detail += " (a wrong directory URL, or the CA no longer has that resource)"
    return AcmeProblem(
        kind, problem_type, clean_text(detail), retry_after=retry_after, http_status=status
    )


def _classify_transport_error(exc: requests.RequestException) -> AcmeProblem:
    url = exc.request.url if exc.request is not None else None
    if isinstance(url, bytes):  # requests allows a bytes URL on a Request
        url = url.decode("utf-8", "replace")
    where = f" ({url})" if url else ""
    if isinstance(exc, requests.exceptions.Timeout):
        return AcmeProblem(
            ProblemKind.RETRYABLE, TIMEOUT, clean_text(f"the CA did not answer in time{where}")
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return AcmeProblem(
            ProblemKind.RETRYABLE,
            TRANSPORT_ERROR,
            clean_text(
                f"TLS with the CA failed{where}: {exc}; if the CA uses a private root, "
                "set the issuer's ca_bundle"
            ),
        )
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema,
    ):
        return AcmeProblem(
            ProblemKind.REJECTED,
            BAD_CONFIGURATION,
            clean_text(f"not a usable URL{where}: {exc}; check the issuer's directory setting"),
        )
    return AcmeProblem(
        ProblemKind.RETRYABLE,
        TRANSPORT_ERROR,
        clean_text(f"could not reach the CA{where}: {exc}"),
    )


# --- Retry-After ---------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: dt.datetime) -> dt.datetime | None:
    """Retry-After (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) as an aware UTC time.

    Unreadable values give None (the worker's own schedule applies); a date in the past
    gives that date (retry at once).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        delay = min(dt.timedelta(seconds=int(text[:12])), _MAX_RETRY_AFTER)
        return now.astimezone(dt.UTC) + delay
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" or an obsolete zone: HTTP-dates are always GMT
        when = when.replace(tzinfo=dt.UTC)
    return min(when.astimezone(dt.UTC), now.astimezone(dt.UTC) + _MAX_RETRY_AFTER)
